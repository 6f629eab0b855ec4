"""User-facing errors.

Raise :class:`LongqaError` for anything a user can fix (bad file, bad field, missing model). The CLI
prints it as a single ``error: …`` line and exits with status 2 — no traceback. The message must name
the file/line/field and what was expected.
"""

from __future__ import annotations


class LongqaError(Exception):
    """An error caused by user input, reported as one line by the CLI."""


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix such as ``data.jsonl:12: field 'messages'``."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if field is not None:
        loc += f": field '{field}'"
    return loc
