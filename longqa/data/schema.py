"""The one sample schema every builder writes and the trainer / analysis read.

A sample (one JSON object per line)::

    {"id": "pmdqa-000017", "task": "paraphrase-mdqa", "lang": "en",
     "messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
     "meta": {...builder-specific: relevant doc ids, depths, token length, generator, ...}}

Pretraining text uses the same file format with ``"text"`` instead of ``"messages"``.
``read_samples`` validates every line and reports ``file:line: field ...`` on bad input; it also
reads every other format ``longqa train --data`` takes (converted by ``longqa.data.formats``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from longqa.core.errors import LongqaError


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    task: str
    lang: str = "en"
    messages: list[Message] | None = None
    text: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _messages_or_text(self) -> Sample:
        if (self.messages is None) == (self.text is None):
            raise ValueError("exactly one of 'messages' or 'text' must be set")
        if self.messages is not None and not any(m.role == "assistant" for m in self.messages):
            raise ValueError("'messages' has no assistant turn")
        return self


def _validate(row: dict[str, Any], where: str) -> Sample:
    try:
        return Sample.model_validate(row)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "<sample>"
        raise LongqaError(f"{where}: field '{loc}': {err['msg']}") from None


def read_samples(path: str | Path, strict: bool = True) -> Iterator[Sample]:
    """Yield samples from a file or folder in any layout :mod:`longqa.data.sources` reads.

    A builder's row (``id`` + ``task``) is validated against :class:`Sample`; a row of another
    format (ShareGPT, Alpaca, plain messages, …) is converted by :mod:`longqa.data.formats` (its
    task is then the format's name). Bad rows raise a one-line error (``strict``) or are skipped."""
    from longqa.data.formats import BadRow, convert_row
    from longqa.data.sources import iter_source_rows

    for _file, where, row in iter_source_rows(path):
        try:
            if isinstance(row, BadRow):
                raise row
            if isinstance(row, dict) and {"id", "task"} <= set(row):
                yield _validate(row, where)
                continue
            rec = convert_row(row, "auto", where)
            if rec.tools or any(
                m["role"] == "tool" or "tool_calls" in m for m in rec.messages or []
            ):
                why = "tool calls are read by `longqa train` and `data inspect`, not here"
                raise BadRow(where, "messages", why, "tool_calls")
        except LongqaError:
            if strict:
                raise
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in rec.messages or []]
        yield Sample(
            id=rec.id,
            task=rec.task or rec.format,
            lang=rec.lang or "en",
            messages=messages if rec.messages is not None else None,
            text=rec.text,
            meta=rec.meta,
        )
