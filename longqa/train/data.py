"""Training examples: mix records by weight and tokenize them for causal-LM training.

Usage::

    from longqa.data.sources import load_records
    from longqa.train.data import tokenize_sft, tokenize_pretrain
    records = load_records("data/pmdqa")                      # list[Record] (messages or text)
    examples, stats = tokenize_sft(records, tokenizer, max_length=16384, overlength="truncate")

Reading and format conversion live in ``longqa.data`` (``sources``, ``formats``); the assistant-token
positions come from the one conversation encoder, ``longqa.data.conversation``. SFT examples carry
labels only on assistant tokens; the first token of every example is never a target (causal shift),
so examples can be packed side by side without one sample predicting the next one's first token.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.conversation import (
    IGNORE_INDEX,
    assistant_labels,
    encode_conversation,
    ensure_chat_template,
    render_conversation,
)
from longqa.data.formats import BadRow, Record

__all__ = ["IGNORE_INDEX", "Example", "Record", "TokenizeStats", "mix_records"]


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_no_labels: int = 0
    split: int = 0
    tokens: int = 0
    label_tokens: int = 0
    skipped_rows: Counter = field(default_factory=Counter)  # bad rows skipped, by reason
    skips: list[str] = field(default_factory=list)  # every skipped row: "<where>: <why>"
    notes: list[str] = field(default_factory=list)
    detected: list[str] = field(default_factory=list)  # "data: f.jsonl → messages, 3 rows"

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("notes", "detected", "skips")}
        out["skipped_rows"] = dict(self.skipped_rows)
        return out


def mix_records(parts: list[tuple[list[Record], float]], seed: int) -> list[Record]:
    """Mix datasets by weight: dataset i contributes ``round(w_i / sum(w) * total)`` samples
    (sampled without replacement while it lasts, then repeated), shuffled with ``seed``."""
    if len(parts) == 1:
        return list(parts[0][0])
    rng = random.Random(seed)
    total = sum(len(r) for r, _ in parts)
    wsum = sum(w for _, w in parts)
    out: list[Record] = []
    for recs, w in parts:
        n = max(1, round(w / wsum * total))
        order = list(range(len(recs)))
        rng.shuffle(order)
        out.extend(recs[order[i % len(order)]] for i in range(n))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- tokenizing


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> Example:
    """Token ids of the rendered conversation and labels on assistant tokens only."""
    enc = encode_conversation(tokenizer, messages, tools)
    return Example(input_ids=enc.input_ids, labels=assistant_labels(enc))


def tokenize_sft(
    records: list[Record],
    tokenizer: Any,
    *,
    max_length: int,
    overlength: str = "truncate",
    skip_bad_rows: bool = False,
) -> tuple[list[Example], TokenizeStats]:
    """Conversations → examples with assistant-only labels (``text`` records are trained on every
    token). Over-long examples are truncated (the end is cut) or dropped, and counted; under
    ``overlength="error"`` one is a one-line error naming its row (skipped and counted in
    ``skipped_rows`` with ``skip_bad_rows``), and so is a conversation the chat template cannot
    render. Examples left without any label token are dropped and counted."""
    stats = TokenizeStats()
    note = ensure_chat_template(tokenizer)
    if note:
        stats.notes.append(note)
    out: list[Example] = []
    for rec in records:
        if rec.messages is not None:
            try:
                ex = tokenize_conversation(tokenizer, rec.messages, rec.tools)
            except BadRow:
                raise
            except LongqaError as exc:
                err = BadRow(rec.source or rec.id, "messages", str(exc), "template")
                if not skip_bad_rows:
                    raise err from None
                stats.skipped_rows["template"] += 1
                stats.skips.append(str(err))
                continue
        else:
            ids = tokenizer(rec.text or "", add_special_tokens=False)["input_ids"]
            ex = Example(input_ids=list(ids), labels=[IGNORE_INDEX, *ids[1:]] if ids else [])
        if len(ex) > max_length:
            if overlength == "error":
                err = BadRow(
                    rec.source or rec.id,
                    "messages" if rec.messages is not None else "text",
                    f"{len(ex)} tokens, over max_length {max_length} (data.overlength: error)",
                    "overlength",
                )
                if not skip_bad_rows:
                    raise err
                stats.skipped_rows["overlength"] += 1
                stats.skips.append(str(err))
                continue
            if overlength == "drop":
                stats.dropped_overlength += 1
                continue
            stats.truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.labels[:max_length])
        if all(t == IGNORE_INDEX for t in ex.labels):
            stats.dropped_no_labels += 1
            continue
        out.append(ex)
    _finish(stats, out)
    return out, stats


def tokenize_pretrain(
    records: list[Record], tokenizer: Any, *, max_length: int
) -> tuple[list[Example], TokenizeStats]:
    """Raw text → causal-LM examples. Each document ends with EOS; documents longer than
    ``max_length`` are split into ``max_length`` blocks (counted as ``split``), not cut off.
    Conversations are rendered with the chat template and trained on every token."""
    stats = TokenizeStats()
    note = ensure_chat_template(tokenizer)
    if note:
        stats.notes.append(note)
    eos = tokenizer.eos_token_id
    out: list[Example] = []
    for rec in records:
        text = (
            rec.text
            if rec.text is not None
            else render_conversation(tokenizer, rec.messages or [], tools=rec.tools)
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [bos, *ids]
        if eos is not None:
            ids.append(eos)
        if len(ids) > max_length:
            stats.split += 1
        for start in range(0, len(ids), max_length):
            block = ids[start : start + max_length]
            if len(block) < 2:
                continue
            out.append(Example(block, [IGNORE_INDEX, *block[1:]]))
    _finish(stats, out)
    return out, stats


def _finish(stats: TokenizeStats, out: list[Example]) -> None:
    stats.examples = len(out)
    stats.tokens = sum(len(e) for e in out)
    stats.label_tokens = sum(sum(t != IGNORE_INDEX for t in e.labels) for e in out)
    if not out:
        raise LongqaError(
            "no training examples left after tokenization "
            f"(dropped: {stats.dropped_overlength} over-long, {stats.dropped_no_labels} without "
            "assistant tokens)"
        )
