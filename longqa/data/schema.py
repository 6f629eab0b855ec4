"""The one sample schema every builder writes and the trainer / analysis read.

A sample (one JSON object per line)::

    {"id": "pmdqa-000017", "task": "paraphrase-mdqa", "lang": "en",
     "messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
     "meta": {...builder-specific: relevant doc ids, depths, token length, generator, ...}}

Pretraining text uses the same file format with ``"text"`` instead of ``"messages"``.
``read_samples`` validates every line and reports ``file:line: field ...`` on bad input.
"""

from __future__ import annotations

import json
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


def sample_files(path: str | Path) -> list[Path]:
    """A .jsonl file, or every ``*.jsonl`` under a folder (sorted) — the builders' output layout."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if not p.name.startswith("."))
        if not files:
            raise LongqaError(f"{path}: no .jsonl files in this folder")
        return files
    raise LongqaError(f"dataset not found: {path}")


def read_samples(path: str | Path, strict: bool = True) -> Iterator[Sample]:
    """Yield validated samples from a file or folder. Bad lines raise (strict) or are skipped."""
    for file in sample_files(path):
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield Sample.model_validate(json.loads(line))
                except json.JSONDecodeError as exc:
                    if strict:
                        raise LongqaError(f"{file}:{lineno}: invalid JSON ({exc.msg})") from None
                except ValidationError as exc:
                    if strict:
                        err = exc.errors()[0]
                        loc = ".".join(str(p) for p in err["loc"]) or "<sample>"
                        raise LongqaError(f"{file}:{lineno}: field '{loc}': {err['msg']}") from None
