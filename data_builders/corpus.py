"""Corpus readers: turn a folder/file of text into clean, deduplicated, bounded-length documents.

Usage::

    corpus = read_corpus("essays/", max_doc_tokens=1024, counter=get_token_counter("approx"))
    for doc in corpus.docs:            # Document(id, text, source, n_tokens, lang)
        ...
    corpus.stats                       # {"files": 49, "raw_documents": ..., "bad_lines": ..., ...}

Inputs: a folder (searched recursively for .txt/.md/.jsonl/.parquet files), a single such file, or a
folder written by ``datasets.Dataset.save_to_disk``. JSONL and Parquet read the text from ``field``
(dotted paths like ``meta.body`` allowed). Each document is cleaned (Unicode NFC, control characters
removed, spaces collapsed, at most one blank line between paragraphs), dropped when shorter than
``min_chars`` or longer than ``max_chars``, deduplicated by exact hash of the cleaned text, and split
into passages of at most ``max_doc_tokens`` tokens at paragraph, then sentence, then word boundaries.
A line that cannot be read (bad JSON, missing/non-string field, undecodable bytes) is reported as
``file:line: reason``, skipped and counted in ``stats["bad_lines"]`` — or raises ``LongqaError``
with ``strict=True``. :func:`iter_raw_documents` streams the raw texts for builders that need no
splitting.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_builders.text import detect_lang
from longqa.core.errors import LongqaError
from longqa.data.sources import is_saved_dataset
from longqa.data.tokens import TokenCounter, get_token_counter

TEXT_EXTS = {".txt", ".md", ".markdown"}
JSONL_EXTS = {".jsonl", ".json"}
PARQUET_EXTS = {".parquet"}

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+|(?<=[。！？])\s*")


@dataclass
class Document:
    """One passage of the corpus. ``id`` is ``<source>#<n>`` (``/p<k>`` when split)."""

    id: str
    text: str
    source: str
    n_tokens: int
    lang: str = "en"


@dataclass
class Corpus:
    docs: list[Document]
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _Problems:
    def __init__(self, strict: bool, limit: int = 50) -> None:
        self.strict = strict
        self.count = 0
        self.examples: list[str] = []
        self.limit = limit

    def add(self, where: str, reason: str) -> None:
        msg = f"{where}: {reason}"
        if self.strict:
            raise LongqaError(msg + " (without --strict this line is skipped and counted)")
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(msg)


def clean_text(text: str) -> str:
    """NFC, no control characters, single spaces, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _get_field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _iter_jsonl(path: Path, fld: str, problems: _Problems) -> Iterator[tuple[str, str]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(where, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(where, f"invalid JSON ({exc.msg})")
                continue
            value = _get_field(obj, fld)
            if value is None:
                problems.add(where, f"field '{fld}' missing")
            elif not isinstance(value, str):
                problems.add(where, f"field '{fld}' is {type(value).__name__}, expected a string")
            else:
                yield where, value


def _iter_text_file(path: Path, problems: _Problems) -> Iterator[tuple[str, str]]:
    data = path.read_bytes()
    try:
        yield str(path), data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        problems.add(f"{path}:{lineno}", f"not UTF-8 ({exc.reason}); file skipped")


def _iter_table(rows: Any, label: str, fld: str, problems: _Problems) -> Iterator[tuple[str, str]]:
    for i, row in enumerate(rows, 1):
        value = _get_field(row, fld)
        where = f"{label}:{i}"
        if not isinstance(value, str):
            problems.add(where, f"field '{fld}' missing or not a string")
        else:
            yield where, value


def _iter_parquet(path: Path, fld: str, problems: _Problems) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        problems.add(str(path), f"unreadable Parquet ({exc.__class__.__name__}: {exc})")
        return
    top = fld.split(".")[0]
    if top not in table.column_names:
        raise LongqaError(f"{path}: no column '{top}' (columns: {', '.join(table.column_names)})")
    yield from _iter_table(table.to_pylist(), str(path), fld, problems)


def _iter_saved_dataset(path: Path, fld: str, problems: _Problems) -> Iterator[tuple[str, str]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for split, part in parts:
        if fld.split(".")[0] not in part.column_names:
            raise LongqaError(
                f"{path}: no column '{fld}' (columns: {', '.join(part.column_names)})"
            )
        label = f"{path}[{split}]" if split else str(path)
        yield from _iter_table(part, label, fld, problems)


def _input_files(path: Path) -> list[Path]:
    exts = TEXT_EXTS | JSONL_EXTS | PARQUET_EXTS
    if path.is_file():
        if path.suffix.lower() not in exts:
            raise LongqaError(
                f"{path}: unsupported corpus file (expected {', '.join(sorted(exts))})"
            )
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )
    if not files:
        raise LongqaError(f"{path}: no corpus files (.txt, .md, .jsonl, .parquet) in this folder")
    return files


def iter_raw_documents(
    path: str | Path, *, field: str = "text", strict: bool = False, _problems: Any = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(where, raw_text)`` for every document under ``path`` (see module docstring)."""
    path = Path(path)
    problems = _problems or _Problems(strict)
    if not path.exists():
        raise LongqaError(f"corpus not found: {path}")
    if is_saved_dataset(path):
        yield from _iter_saved_dataset(path, field, problems)
        return
    for file in _input_files(path):
        ext = file.suffix.lower()
        if ext in TEXT_EXTS:
            yield from _iter_text_file(file, problems)
        elif ext in JSONL_EXTS:
            yield from _iter_jsonl(file, field, problems)
        else:
            yield from _iter_parquet(file, field, problems)


def split_sentences(text: str) -> list[str]:
    """Split at sentence ends (Latin and CJK punctuation); keeps the punctuation."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def split_passages(text: str, max_tokens: int, counter: TokenCounter) -> list[str]:
    """Greedy packing of paragraphs (then sentences, then words) into passages <= max_tokens."""
    units: list[tuple[str, int, str]] = []  # (text, tokens, joiner before it)
    for para in text.split("\n\n"):
        n = counter.count(para)
        if n <= max_tokens:
            units.append((para, n, "\n\n"))
            continue
        for j, sent in enumerate(split_sentences(para)):
            joiner = "\n\n" if j == 0 else " "
            m = counter.count(sent)
            if m <= max_tokens:
                units.append((sent, m, joiner))
                continue
            words = sent.split(" ") if " " in sent else list(sent)
            sep = " " if " " in sent else ""
            chunk: list[str] = []
            for w in words:
                if chunk and counter.count(sep.join([*chunk, w])) > max_tokens:
                    units.append((sep.join(chunk), counter.count(sep.join(chunk)), joiner))
                    joiner, chunk = " ", []
                chunk.append(w)
            if chunk:
                units.append((sep.join(chunk), counter.count(sep.join(chunk)), joiner))
    passages: list[str] = []
    cur, cur_n = "", 0
    for unit, n, joiner in units:
        if cur and cur_n + n + 1 > max_tokens:
            passages.append(cur)
            cur, cur_n = "", 0
        cur = unit if not cur else cur + joiner + unit
        cur_n += n + (1 if cur != unit else 0)
    if cur:
        passages.append(cur)
    return passages


def read_corpus(
    path: str | Path,
    *,
    field: str = "text",
    max_doc_tokens: int | None = 1024,
    min_chars: int = 50,
    max_chars: int | None = None,
    counter: TokenCounter | None = None,
    dedup: bool = True,
    strict: bool = False,
    limit: int | None = None,
) -> Corpus:
    """Read, clean, filter, dedup and split a corpus into :class:`Document` passages."""
    counter = counter or get_token_counter("approx")
    problems = _Problems(strict)
    stats = {"raw_documents": 0, "too_short": 0, "too_long": 0, "duplicates": 0, "split": 0}
    seen: set[str] = set()
    docs: list[Document] = []
    sources: set[str] = set()
    for where, raw in iter_raw_documents(path, field=field, strict=strict, _problems=problems):
        stats["raw_documents"] += 1
        text = clean_text(raw)
        if len(text) < min_chars:
            stats["too_short"] += 1
            continue
        if max_chars is not None and len(text) > max_chars:
            stats["too_long"] += 1
            continue
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if dedup and digest in seen:
            stats["duplicates"] += 1
            continue
        seen.add(digest)
        source = where.rsplit(":", 1)[0] if where.rsplit(":", 1)[-1].isdigit() else where
        sources.add(source)
        base_id = _doc_id(path, where)
        lang = detect_lang(text)
        if max_doc_tokens is not None and counter.count(text) > max_doc_tokens:
            parts = split_passages(text, max_doc_tokens, counter)
            stats["split"] += 1
        else:
            parts = [text]
        for k, part in enumerate(parts):
            pid = base_id if len(parts) == 1 else f"{base_id}/p{k}"
            docs.append(Document(pid, part, source, counter.count(part), lang))
        if limit is not None and len(docs) >= limit:
            break
    stats.update(
        sources=len(sources),
        documents=len(docs),
        bad_lines=problems.count,
        tokens=sum(d.n_tokens for d in docs),
        tokenizer=counter.name,
    )
    return Corpus(docs, stats, problems.examples)


def _doc_id(root: str | Path, where: str) -> str:
    """A stable, readable id: the path relative to the corpus root, plus the line number."""
    root = Path(root)
    file, _, line = where.rpartition(":") if where.rsplit(":", 1)[-1].isdigit() else (where, "", "")
    try:
        rel = Path(file).relative_to(root).as_posix() if root.is_dir() else Path(file).name
    except ValueError:
        rel = Path(file).name
    rel = rel or Path(file).name
    return f"{rel}#{line}" if line else rel
