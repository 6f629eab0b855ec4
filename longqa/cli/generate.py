"""`longqa generate` (not available yet)."""

from __future__ import annotations

from longqa.errors import LongqaError


def generate() -> None:
    """Not available yet: arrives with the generate work."""
    raise LongqaError("`longqa generate` is not available yet (it arrives with the generate work)")
