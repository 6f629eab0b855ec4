"""What a dataset holds before a long run: format, rows, token lengths against max_length, and
the share of tokens that are trained (assistant tokens of conversations, every token of text).

Usage::

    from longqa.data.inspection import inspect_dataset
    report = inspect_dataset("chat.jsonl", tokenizer=tok, max_length=16384)
    print("\\n".join(report.lines()))

This is what ``longqa data inspect PATH [--recipe R | --tokenizer T]`` prints. Lengths are the
tokens of the conversation rendered with the tokenizer's chat template (ChatML when it has none),
measured by the same encoder training uses (:mod:`longqa.data.conversation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.conversation import encode_conversation, ensure_chat_template
from longqa.data.sources import LoadedData, load_dataset_records

# histogram bin edges as fractions of max_length; the last bin is everything above 2x
_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class DatasetReport:
    loaded: LoadedData
    max_length: int | None = None
    tokenizer: str | None = None
    lengths: list[int] = field(default_factory=list)
    trained_tokens: int = 0
    conversations: int = 0
    documents: int = 0

    @property
    def rows(self) -> int:
        return len(self.loaded.records)

    @property
    def trained_share(self) -> float:
        total = sum(self.lengths)
        return self.trained_tokens / total if total else 0.0

    def histogram(self) -> list[tuple[str, int]]:
        """``(bin label, rows)``: bins relative to ``max_length`` (or to the longest row)."""
        if not self.lengths:
            return []
        ref = self.max_length or max(self.lengths)
        edges = sorted({max(1, round(ref * f)) for f in _FRACTIONS})
        if not self.max_length:
            edges = [e for e in edges if e <= ref]
        out, lo = [], 0
        for hi in edges:
            out.append((f"{lo + 1}-{hi}", sum(lo < n <= hi for n in self.lengths)))
            lo = hi
        if any(n > lo for n in self.lengths):
            out.append((f">{lo}", sum(n > lo for n in self.lengths)))
        return out

    def lines(self) -> list[str]:
        out = [*self.loaded.describe(), f"rows: {self.rows} ({self.conversations} conversations, "
               f"{self.documents} documents)"]  # fmt: skip
        if not self.lengths:
            out.append("token lengths: give --recipe or --tokenizer to measure them")
            return out
        over = sum(n > self.max_length for n in self.lengths) if self.max_length else 0
        limit = f", max_length {self.max_length}: {over} rows over" if self.max_length else ""
        out.append(
            f"tokens ({self.tokenizer}): total {sum(self.lengths):,}, mean "
            f"{sum(self.lengths) / len(self.lengths):,.0f}, max {max(self.lengths):,}{limit}"
        )
        width = max(c for _, c in self.histogram()) or 1
        for label, count in self.histogram():
            bar = "#" * round(30 * count / width)
            out.append(f"  {label:>13} tokens | {count:6d} {bar}")
        out.append(
            f"trained tokens: {self.trained_share:.1%} "
            "(assistant tokens of conversations, all tokens of documents)"
        )
        return out


def inspect_dataset(
    path: str | Path,
    *,
    tokenizer: Any = None,
    tokenizer_name: str | None = None,
    max_length: int | None = None,
    fmt: str = "auto",
    skip_bad_rows: bool = False,
    columns: str | None = None,
) -> DatasetReport:
    """Read ``path`` and, with a tokenizer, measure every row (see the module docstring)."""
    loaded = load_dataset_records(path, fmt, skip_bad_rows=skip_bad_rows, columns=columns)
    report = DatasetReport(loaded, max_length=max_length, tokenizer=tokenizer_name)
    for rec in loaded.records:
        if rec.messages is not None:
            report.conversations += 1
        else:
            report.documents += 1
    if tokenizer is None:
        return report
    ensure_chat_template(tokenizer)
    for rec in loaded.records:
        if rec.messages is not None:
            try:
                enc = encode_conversation(tokenizer, rec.messages, rec.tools)
            except LongqaError as exc:
                raise LongqaError(f"{rec.source or rec.id}: {exc}") from None
            report.lengths.append(len(enc.input_ids))
            report.trained_tokens += len(enc.positions)
        else:
            n = len(tokenizer(rec.text or "", add_special_tokens=False)["input_ids"])
            report.lengths.append(n)
            report.trained_tokens += n
    return report
