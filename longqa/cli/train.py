"""`longqa train` (not available yet)."""

from __future__ import annotations

from longqa.errors import LongqaError


def train() -> None:
    """Not available yet: arrives with the trainer work."""
    raise LongqaError("`longqa train` is not available yet (it arrives with the trainer work)")
