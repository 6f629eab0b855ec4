"""Long-context pretraining text: select long documents and pack them (``--task long-pretrain``).

1. Selection: every document of ``--corpus`` (one or more: .txt/.md folders, JSONL with
   ``--field``, Parquet, a saved ``datasets`` folder) with at least ``--min-words`` words
   (default 16000; characters for Chinese) is kept, in corpus order, exact duplicates dropped.
2. Upsampling: documents of at least ``upsample_min_words`` words appear ``--upsample`` times
   (a fractional part is a seeded coin flip); the copies follow the first pass in the same order.
3. Packing, as in ChatQA 2 (Xu et al. 2024, arXiv:2407.14482, §3.1): the documents are tokenized
   with ``--tokenizer`` (no special tokens), each followed by the ``--separator`` string (default
   ``<s>``, which ChatQA 2 found better than BOS/EOS tokens), concatenated into one token stream and
   cut into sequences of exactly ``--target-tokens`` tokens. Documents run on across sequence
   boundaries; the final incomplete sequence is dropped and its size reported
   (``tail_tokens_dropped``), so every sequence has exactly the target length.

Output: JSONL shards of ``{"id", "task", "lang", "text", "meta"}`` where ``text`` is the decoded
sequence and ``meta.input_ids`` the exact token ids (``store_ids``; a decode/re-encode of ``text``
may tokenize differently at cut points), ``meta.docs`` the document pieces it holds. The tokenizer
``approx`` is a reversible regex tokenizer for tests and dry runs (its ids are not a model's).

Malformed input: an unreadable JSONL line is skipped and counted (``bad_lines``; ``strict`` fails
with file and line); an empty file/document or one below ``--min-words`` is counted in
``too_short``; exact duplicates in ``duplicates``. A corpus with no document long enough is an error.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_builders.text import count_words, detect_lang
from longqa.core.errors import LongqaError
from longqa.data.tokens import get_token_counter

TASK = "long-pretrain"


class Options(BaseModel):
    """Flags of ``longqa build-data --task long-pretrain``."""

    model_config = ConfigDict(extra="forbid")
    corpus: list[Path] = Field(min_length=1, description="one or more corpora")
    out: Path
    min_words: int = Field(16000, ge=0, description="words, or characters for Chinese")
    target_tokens: int = Field(32768, gt=0, description="exact length of every sequence")
    tokenizer: str = Field("smollm2-135m", description="tokenizer name/path/alias, or 'approx'")
    separator: str = Field("<s>", description="string between documents")
    upsample: float = Field(1.0, ge=1.0, description="times a long document appears")
    upsample_min_words: int = Field(64000, ge=0)
    field: str = "text"
    store_ids: bool = True
    max_sequences: int | None = Field(None, gt=0)
    shard_size: int = Field(100, gt=0)
    seed: int = 0
    strict: bool = False

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            return [p for p in str(v).split(",") if p.strip()]
        return v


# ----------------------------------------------------------------------------- packing


@dataclass
class Packed:
    """One packed sequence: ``ids`` (exactly the target length) and the document pieces in it.

    Each piece is ``(doc_id, start, end, has_separator)``: tokens ``[start, end)`` of the document.
    """

    ids: list[int] = field(default_factory=list)
    pieces: list[tuple[str, int, int, bool]] = field(default_factory=list)


@dataclass
class PackResult:
    tail_tokens: int = 0
    tokens: int = 0
    documents: int = 0


def pack(
    docs: Iterable[tuple[str, list[int]]],
    sep_ids: list[int],
    target: int,
    result: PackResult | None = None,
) -> Iterator[Packed]:
    """Concatenate ``doc + separator`` token lists and cut them into ``target``-token sequences.

    ``result`` (filled in as a side effect) receives the dropped tail size and totals.
    """
    result = result if result is not None else PackResult()
    current = Packed()
    for doc_id, ids in docs:
        result.documents += 1
        full = ids + sep_ids
        result.tokens += len(full)
        pos = 0
        while pos < len(full):
            take = min(target - len(current.ids), len(full) - pos)
            current.ids.extend(full[pos : pos + take])
            end = pos + take
            current.pieces.append((doc_id, min(pos, len(ids)), min(end, len(ids)), end > len(ids)))
            pos = end
            if len(current.ids) == target:
                yield current
                current = Packed()
    result.tail_tokens = len(current.ids)


# ----------------------------------------------------------------------------- selection


def select_documents(options: Options, counts: Counter, lengths: list[int]) -> Iterator[tuple]:
    """``(doc_id, text, words)`` of every long-enough document, in corpus order, deduplicated."""
    from data_builders.corpus import _Problems, clean_text, iter_raw_documents

    problems = _Problems(options.strict)
    seen: set[str] = set()
    for corpus in options.corpus:
        if not corpus.exists():
            raise LongqaError(f"corpus not found: {corpus}")
        for where, raw in iter_raw_documents(
            corpus, field=options.field, strict=options.strict, _problems=problems
        ):
            counts["raw_documents"] += 1
            text = clean_text(raw)
            words = count_words(text)
            if words < max(1, options.min_words):
                counts["too_short"] += 1
                continue
            digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
            if digest in seen:
                counts["duplicates"] += 1
                continue
            seen.add(digest)
            lengths.append(words)
            yield where, text, words
    counts["bad_lines"] = problems.count


def document_stream(options: Options, counts: Counter, lengths: list[int]) -> Iterator[tuple]:
    """Selected documents, then the upsampled copies of the long ones (``#copyN`` ids)."""
    rng = random.Random(options.seed)
    extra: list[tuple[str, str, int]] = []
    for doc_id, text, words in select_documents(options, counts, lengths):
        yield doc_id, text, words
        if options.upsample > 1 and words >= options.upsample_min_words:
            whole = int(options.upsample)
            n = whole - 1 + (rng.random() < options.upsample - whole)
            extra.extend((doc_id, text, words) for _ in range(n))
    copies: Counter = Counter()
    for doc_id, text, words in extra:
        copies[doc_id] += 1
        counts["upsampled_copies"] += 1
        yield f"{doc_id}#copy{copies[doc_id]}", text, words


# ----------------------------------------------------------------------------- build


def build(options: Options, codec: Any = None) -> dict:
    """Select, upsample and pack; write sequences to ``options.out``; returns the stats."""
    from data_builders.writer import ShardWriter, length_histogram, write_stats

    codec = codec or get_token_counter(options.tokenizer)
    sep_ids = codec.encode(options.separator) if options.separator else []
    counts: Counter = Counter()
    lengths: list[int] = []
    langs: Counter = Counter()
    result = PackResult()

    def tokenized() -> Iterator[tuple[str, list[int]]]:
        for doc_id, text, _ in document_stream(options, counts, lengths):
            if "#copy" not in doc_id:
                langs[detect_lang(text)] += 1
            yield doc_id, codec.encode(text)

    n = 0
    with ShardWriter(options.out, shard_size=options.shard_size) as writer:
        for n, seq in enumerate(pack(tokenized(), sep_ids, options.target_tokens, result), 1):
            text = codec.decode(seq.ids)
            meta: dict[str, Any] = {
                "n_tokens": len(seq.ids),
                "tokenizer": codec.name,
                "separator": options.separator,
                "docs": [list(p) for p in seq.pieces],
            }
            if options.store_ids:
                meta["input_ids"] = seq.ids
            writer.write(
                {
                    "id": f"lp-{n - 1:07d}",
                    "task": TASK,
                    "lang": detect_lang(text),
                    "text": text,
                    "meta": meta,
                }
            )
            if options.max_sequences and n >= options.max_sequences:
                break
    if not lengths:
        raise LongqaError(
            f"no document in {', '.join(map(str, options.corpus))} has --min-words "
            f"{options.min_words} words (or characters for Chinese); "
            f"{counts['raw_documents']} documents read"
        )
    stats = {
        "task": TASK,
        "sequences": n,
        "target_tokens": options.target_tokens,
        "tokenizer": codec.name,
        "separator": options.separator,
        "separator_tokens": len(sep_ids),
        "raw_documents": counts["raw_documents"],
        "selected_documents": len(lengths),
        "upsampled_copies": counts["upsampled_copies"],
        "skipped": {k: counts[k] for k in ("too_short", "duplicates", "bad_lines")},
        "languages": dict(langs),
        "stream_tokens": result.tokens,
        "tail_tokens_dropped": result.tail_tokens,
        "document_words_histogram": length_histogram(lengths),
        "stopped_early": bool(options.max_sequences and n >= options.max_sequences),
    }
    write_stats(options.out, stats)
    return stats
