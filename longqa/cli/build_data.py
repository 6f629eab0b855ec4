"""`longqa build-data` (not available yet)."""

from __future__ import annotations

from longqa.errors import LongqaError


def build_data() -> None:
    """Not available yet: arrives with the data builders work."""
    raise LongqaError(
        "`longqa build-data` is not available yet (it arrives with the data builders work)"
    )
