"""The one error a row that cannot be used raises (re-exported by :mod:`longqa.data.formats`).

Usage::

    from longqa.data.bad_rows import BadRow
    raise BadRow("chat.jsonl:3", "messages.1.content", "expected a string", "bad_turn")
    # str(err) == "chat.jsonl:3: field 'messages.1.content': expected a string"; err.reason counts it
"""

from __future__ import annotations

from longqa.core.errors import LongqaError


class BadRow(LongqaError):
    """A row that cannot be used: ``str(err)`` is ``"<where>: field '<f>': <why>"``."""

    def __init__(self, where: str, fld: str | None, why: str, reason: str) -> None:
        self.where, self.field, self.reason = where, fld, reason
        super().__init__(f"{where}: " + (f"field '{fld}': " if fld else "") + why)
