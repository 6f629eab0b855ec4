"""Training data: read datasets in any supported format and tokenize them into training examples.

Usage::

    from longqa.train.data import load_records, tokenize_sft, tokenize_pretrain
    records = load_records("data/pmdqa", fmt="auto")          # list[Record] (messages or text)
    examples, stats = tokenize_sft(records, tokenizer, max_length=16384, overlength="truncate")

Formats (one JSON object per line, or ``.txt`` files for plain text):

* ``messages`` — the builders' schema (``longqa/data/schema.py``): ``{"id", "task", "messages"}``
  or ``{"id", "task", "text"}``.
* ``sharegpt`` — ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}]}``.
* ``alpaca`` — ``{"instruction", "input", "output"}`` (``input`` optional).
* ``text`` — ``{"text": …}`` lines or ``.txt`` files (one file = one document).

SFT examples carry labels only on assistant tokens: each assistant turn's span is found by rendering
the conversation prefix with the tokenizer's chat template (``add_generation_prompt=True``) and the
conversation up to and including that turn; tokens whose characters fall in such a span get labels,
everything else gets ``-100``. The first token of every example is never a target (causal shift),
so examples can be packed side by side without one sample predicting the next one's first token.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from longqa.core.errors import LongqaError

IGNORE_INDEX = -100

# ChatML, used when a tokenizer ships without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Record:
    """One raw sample: a conversation (``messages``) or a document (``text``)."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    source: str = ""


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
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


# ---------------------------------------------------------------- reading


def _detect_format(obj: dict[str, Any]) -> str:
    if "messages" in obj or ("text" in obj and "id" in obj and "task" in obj):
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "text" in obj:
        return "text"
    return "unknown"


def _convert(obj: Any, fmt: str, loc: str) -> Record:
    if not isinstance(obj, dict):
        raise LongqaError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
    kind = _detect_format(obj) if fmt == "auto" else fmt
    if kind == "messages":
        from longqa.data.schema import Sample

        try:
            s = Sample.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "<sample>"
            raise LongqaError(f"{loc}: field '{where}': {err['msg']}") from None
        if s.text is not None:
            return Record(text=s.text, source=loc)
        return Record(messages=[m.model_dump() for m in s.messages or []], source=loc)
    if kind == "sharegpt":
        turns = obj.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise LongqaError(f"{loc}: field 'conversations': expected a non-empty list")
        msgs = []
        for i, t in enumerate(turns):
            role = (
                _SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
            )
            if role is None or not isinstance(t.get("value"), str):
                raise LongqaError(
                    f"{loc}: field 'conversations.{i}': expected from=human|gpt|system and a "
                    "string value"
                )
            msgs.append({"role": role, "content": t["value"]})
        if not any(m["role"] == "assistant" for m in msgs):
            raise LongqaError(f"{loc}: field 'conversations': no gpt/assistant turn")
        return Record(messages=msgs, source=loc)
    if kind == "alpaca":
        ins, inp, out = obj.get("instruction"), obj.get("input", ""), obj.get("output")
        if not isinstance(ins, str) or not isinstance(out, str) or not isinstance(inp, str | None):
            raise LongqaError(f"{loc}: fields 'instruction'/'output': expected strings")
        prompt = ins if not inp else f"{ins}\n\n{inp}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": out}]
        return Record(messages=msgs, source=loc)
    if kind == "text":
        if not isinstance(obj.get("text"), str):
            raise LongqaError(f"{loc}: field 'text': expected a string")
        return Record(text=obj["text"], source=loc)
    raise LongqaError(
        f"{loc}: unrecognised sample (expected 'messages', 'text', 'conversations' or "
        "'instruction'+'output')"
    )


def dataset_files(path: str | Path) -> list[Path]:
    """A file, or every ``*.jsonl``/``*.json``/``*.txt`` under a folder (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and f.suffix in (".jsonl", ".txt") and not f.name.startswith(".")
        )
        if not files:
            raise LongqaError(f"{p}: no .jsonl or .txt files in this folder")
        return files
    raise LongqaError(f"dataset not found: {p}")


def load_records(path: str | Path, fmt: str = "auto") -> list[Record]:
    """Read every sample of a dataset file/folder; malformed lines raise with ``file:line``."""
    records: list[Record] = []
    for file in dataset_files(path):
        if file.suffix == ".txt":
            text = file.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                records.append(Record(text=text, source=str(file)))
            continue
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                loc = f"{file}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LongqaError(f"{loc}: invalid JSON ({exc.msg})") from None
                records.append(_convert(obj, fmt, loc))
    if not records:
        raise LongqaError(f"{path}: dataset is empty (no samples)")
    return records


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


def ensure_chat_template(tokenizer: Any) -> str | None:
    """Give a template-less tokenizer ChatML; returns a notice when it did so."""
    if getattr(tokenizer, "chat_template", None):
        return None
    tokenizer.chat_template = CHATML_TEMPLATE
    return "tokenizer has no chat template: using ChatML"


def _render(tokenizer: Any, messages: list[dict[str, str]], gen_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple]]:
    """Render a conversation; return ``(text, [(start, end), …])`` character spans of assistant
    replies (each including the template's end-of-turn marker)."""
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if text.startswith(upto) and upto.startswith(prefix) and len(prefix) >= cursor:
            start, end = len(prefix), len(upto)
        else:  # template renders history differently: fall back to locating the reply text
            start = text.find(m["content"], cursor)
            if start < 0:
                raise LongqaError("chat template drops an assistant reply; cannot place labels")
            end = start + len(m["content"])
            eos = getattr(tokenizer, "eos_token", None)
            if eos and text.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        cursor = end
    return text, spans


@dataclass
class EncodedConversation:
    """A rendered, tokenized conversation and where its assistant tokens are."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in ``text``
    spans: list[tuple[int, int]]  # character spans of the assistant replies
    positions: list[int]  # token indices inside an assistant reply (never index 0)
    turns: list[int]  # for each position, the index of its assistant reply


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> EncodedConversation:
    """Render with the chat template, tokenize, and locate every assistant token."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    positions, turns = [], []
    j = 0
    for k, (s, _e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if k > 0 and j < len(spans) and spans[j][0] <= s < spans[j][1]:
            positions.append(k)
            turns.append(j)
    return EncodedConversation(text, ids, offsets, spans, positions, turns)


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> Example:
    """Token ids of the rendered conversation and labels on assistant tokens only."""
    enc = encode_conversation(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(enc.input_ids)
    for k in enc.positions:
        labels[k] = enc.input_ids[k]
    return Example(input_ids=enc.input_ids, labels=labels)


def tokenize_sft(
    records: list[Record], tokenizer: Any, *, max_length: int, overlength: str = "truncate"
) -> tuple[list[Example], TokenizeStats]:
    """Conversations → examples with assistant-only labels (``text`` records are trained on every
    token). Over-long examples are truncated (the end is cut) or dropped, and counted; examples
    left without any label token are dropped and counted."""
    stats = TokenizeStats()
    note = ensure_chat_template(tokenizer)
    if note:
        stats.notes.append(note)
    out: list[Example] = []
    for rec in records:
        if rec.messages is not None:
            ex = tokenize_conversation(tokenizer, rec.messages)
        else:
            ids = tokenizer(rec.text or "", add_special_tokens=False)["input_ids"]
            ex = Example(input_ids=list(ids), labels=[IGNORE_INDEX, *ids[1:]] if ids else [])
        if len(ex) > max_length:
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
        text = rec.text if rec.text is not None else _render(tokenizer, rec.messages or [], False)
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
