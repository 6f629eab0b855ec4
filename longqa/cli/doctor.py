"""`longqa doctor` (not available yet)."""

from __future__ import annotations

from longqa.errors import LongqaError


def doctor() -> None:
    """Not available yet: arrives with the foundation work."""
    raise LongqaError("`longqa doctor` is not available yet (it arrives with the foundation work)")
