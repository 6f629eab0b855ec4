"""`longqa export` (not available yet)."""

from __future__ import annotations

from longqa.errors import LongqaError


def export() -> None:
    """Not available yet: arrives with the export work."""
    raise LongqaError("`longqa export` is not available yet (it arrives with the export work)")
