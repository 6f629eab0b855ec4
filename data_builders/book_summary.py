"""Book summaries: the book's text is the instruction, its summary the answer (``--task book-summary``).

Input (``--input PATH``):

* a folder of paired files: ``NAME.txt`` (or ``.md``) holds the book, ``NAME.summary.txt`` (or
  ``.summary.md``) its summary. A summary file whose chapter markers match the book's chapters
  one-to-one is read as chapter summaries.
* a JSONL file (or folder of them) with the book in ``text`` (or a list of chapters in
  ``chapters``) and ``summary`` and/or ``chapter_summaries`` (a list, one per chapter).

Chapters are found by their markers ("Chapter 3", "CHAPTER IV", Markdown headings, "第三章").
A book longer than ``target_tokens`` is cut at chapter boundaries into consecutive windows, each one
sample whose answer is the summaries of its chapters. Malformed input is never dropped silently;
each case is skipped (or handled as stated) and counted in stats.json under ``skipped``:

* empty book or summary file → ``empty``; book without a summary file/field → ``missing_summary``;
  unreadable JSONL line → ``bad_line`` (``strict`` fails instead).
* a book with no chapter markers is one chapter: kept whole when it fits (counted in
  ``no_chapter_markers``), else skipped as ``no_chapter_markers_too_long`` (it cannot be cut at a
  chapter boundary).
* only a whole-book summary and the book is too long → ``overlong_whole_summary``
  (``overlong=truncate`` keeps the leading chapters instead and marks ``meta.truncated``).
* chapter summaries whose count differs from the chapters → the whole summary is used when given
  (counted in ``chapter_summaries_ignored``), else skipped as ``chapter_count_mismatch``; one
  chapter longer than the target → ``chapter_too_long``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data_builders.text import count_words, detect_lang
from longqa.core.errors import LongqaError

TASK = "book-summary"

_NUM_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty"
)
_CHAPTER_LINE = re.compile(
    rf"^[ \t]*(?:(?:chapter|CHAPTER|Chapter)[ \t]+(?:\d+|[IVXLCDMivxlcdm]+|(?i:{_NUM_WORDS})"
    rf"(?:[- ](?i:{_NUM_WORDS}))?)\b[^\n]*"
    r"|#{1,3}[ \t]+\S[^\n]*"
    r"|第[0-9０-９零〇一二三四五六七八九十百千两]+[章回节卷][^\n]*)$",
    re.MULTILINE,
)

INSTRUCTIONS = {
    "en": {
        "whole": "Write a summary of the book above.",
        "chapters": "Summarize each chapter of the text above, one paragraph per chapter.",
    },
    "zh": {
        "whole": "请为以上书籍写一篇摘要。",
        "chapters": "请逐章概括以上文本，每章一段。",
    },
}


class Options(BaseModel):
    """Flags of ``longqa build-data --task book-summary``."""

    model_config = ConfigDict(extra="forbid")
    input: Path = Field(description="folder of paired book/summary files, or JSONL")
    out: Path = Field(description="output folder (JSONL shards + stats.json)")
    target_tokens: int = Field(32768, gt=0, description="longest sample, in tokens")
    tokenizer: str = Field("smollm2-135m", description="tokenizer name/path/alias for lengths")
    field: str = "text"
    chapters_field: str = "chapters"
    summary_field: str = "summary"
    chapter_summaries_field: str = "chapter_summaries"
    overlong: Literal["skip", "truncate"] = "skip"
    lang: Literal["auto", "en", "zh"] = "auto"
    system_prompt: str = "You are a helpful assistant."
    max_samples: int | None = Field(None, gt=0)
    strict: bool = False
    shard_size: int = Field(1000, ge=1)
    seed: int = 0


@dataclass
class Book:
    """One book as read from the input: chapters (titled) plus summaries."""

    id: str
    source: str
    chapters: list[tuple[str, str]]
    front: str = ""
    summary: str = ""
    chapter_summaries: list[str] = field(default_factory=list)
    has_markers: bool = True


def split_chapters(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``(front_matter, [(title, body), ...])`` split at chapter marker lines.

    Without markers the whole text is one untitled chapter: ``("", [("", text)])``. Headings with
    no text under them (a part title just before "Chapter 1") are folded into the next chapter.
    """
    marks = list(_CHAPTER_LINE.finditer(text))
    if not marks:
        return "", [("", text.strip())]
    front = text[: marks[0].start()].strip()
    chapters: list[tuple[str, str]] = []
    carry = ""
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        title = m.group(0).strip().lstrip("#").strip()
        body = text[m.end() : end].strip()
        if not body:
            carry = f"{carry}\n\n{title}".strip()
            continue
        chapters.append((f"{carry}\n\n{title}".strip(), body))
        carry = ""
    if carry:
        chapters.append((carry, ""))
    return front, chapters


def chapter_text(title: str, body: str) -> str:
    return f"{title}\n\n{body}" if title else body


def windows(
    texts: list[str], budget: int, count_tokens: Callable[[str], int]
) -> tuple[list[list[int]], list[int]]:
    """Greedy consecutive windows of chapter indices whose joined text fits ``budget`` tokens.

    Returns ``(windows, too_long)``: a chapter longer than the budget alone joins no window and is
    listed in ``too_long`` (it cannot be cut at a chapter boundary); it also ends the window before.
    """
    out: list[list[int]] = []
    too_long: list[int] = []
    current: list[int] = []
    used = 0
    for i, text in enumerate(texts):
        n = count_tokens(text) + 2  # +2: the blank line joining chapters
        if n > budget:
            too_long.append(i)
            if current:
                out.append(current)
            current, used = [], 0
            continue
        if used + n > budget and current:
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        out.append(current)
    return out, too_long


def render_chapter_summaries(titles: list[str], summaries: list[str], lang: str) -> str:
    parts = []
    for title, summary in zip(titles, summaries, strict=True):
        label = title.splitlines()[-1] if title else None
        label = label or ("本章" if lang == "zh" else "Chapter")
        sep = "：" if lang == "zh" else ": "
        parts.append(f"{label}{sep}{summary.strip()}")
    return "\n\n".join(parts)


def book_samples(
    book: Book,
    opts: Options,
    count_tokens: Callable[[str], int],
    counts: Counter,
) -> Iterator[dict]:
    """Samples of one book (zero or more); every reason for dropping something is counted."""
    texts = [chapter_text(t, b) for t, b in book.chapters]
    if book.front and texts:
        texts[0] = f"{book.front}\n\n{texts[0]}"
    full = "\n\n".join(texts).strip()
    summary = book.summary.strip()
    ch_sums = list(book.chapter_summaries)
    if not full:
        counts["empty"] += 1
        return
    if not summary and not ch_sums:
        counts["missing_summary"] += 1
        return
    lang = opts.lang if opts.lang != "auto" else detect_lang(full)
    if ch_sums and (len(ch_sums) != len(texts) or not all(s.strip() for s in ch_sums)):
        ch_sums = []
        if not summary:
            counts["chapter_count_mismatch"] += 1
            return
        counts["chapter_summaries_ignored"] += 1
    if not book.has_markers:
        counts["no_chapter_markers"] += 1
    instruction = INSTRUCTIONS[lang]
    overhead = count_tokens(f"{opts.system_prompt}\n{instruction['chapters']}") + 16
    budget = opts.target_tokens - overhead

    def make(idx: list[int], answer: str, kind: str, **extra: object) -> dict:
        text = "\n\n".join(texts[i] for i in idx).strip()
        user = f"{text}\n\n{instruction[kind]}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        if opts.system_prompt:
            messages.insert(0, {"role": "system", "content": opts.system_prompt})
        meta = {
            "book_id": book.id,
            "source": book.source,
            "chapters": [idx[0], idx[-1] + 1],
            "n_chapters": len(texts),
            "summary_kind": kind,
            "words": count_words(text),
            "tokens": count_tokens(user) + count_tokens(answer),
            **extra,
        }
        return {"task": TASK, "lang": lang, "messages": messages, "meta": meta}

    def chapter_answer(idx: list[int]) -> str:
        titles = [book.chapters[i][0] for i in idx]
        return render_chapter_summaries(titles, [ch_sums[i] for i in idx], lang)

    everything = list(range(len(texts)))
    if count_tokens(full) + overhead <= opts.target_tokens:
        if ch_sums and len(texts) > 1:
            yield make(everything, chapter_answer(everything), "chapters")
        else:
            yield make(everything, summary or "\n\n".join(ch_sums), "whole")
        return
    if not book.has_markers or len(texts) < 2:
        counts["no_chapter_markers_too_long"] += 1
        return
    wins, too_long = windows(texts, budget, count_tokens)
    if ch_sums:
        counts["chapter_too_long"] += len(too_long)
        for idx in wins:
            yield make(idx, chapter_answer(idx), "chapters")
        return
    if opts.overlong == "skip" or not wins or wins[0][0] != 0:
        counts["overlong_whole_summary"] += 1
        return
    counts["truncated"] += 1
    yield make(wins[0], summary, "whole", truncated=True)


# ----------------------------------------------------------------------------- reading books

_BOOK_SUFFIXES = (".txt", ".md")


def _summary_file(book: Path) -> Path | None:
    for suffix in _BOOK_SUFFIXES:
        candidate = book.with_name(f"{book.stem}.summary{suffix}")
        if candidate.exists():
            return candidate
    return None


def book_from_text(
    book_id: str, source: str, text: str, summary_text: str, chapter_summaries: list[str]
) -> Book:
    """A :class:`Book` from raw text; a summary file with the book's chapter markers (one per
    chapter) becomes chapter summaries."""
    front, chapters = split_chapters(text)
    has_markers = bool(chapters and chapters[0][0])
    summary = summary_text
    if summary_text and not chapter_summaries and has_markers:
        s_front, s_chapters = split_chapters(summary_text)
        if s_chapters[0][0] and len(s_chapters) == len(chapters) and not s_front:
            chapter_summaries, summary = [b for _, b in s_chapters], ""
    return Book(
        id=book_id,
        source=source,
        chapters=chapters,
        front=front,
        summary=summary,
        chapter_summaries=chapter_summaries,
        has_markers=has_markers,
    )


def _record_book(rec: dict, where: str, opts: Options) -> Book:
    chapters = rec.get(opts.chapters_field)
    if isinstance(chapters, list) and chapters:
        parts: list[tuple[str, str]] = []
        for ch in chapters:
            if isinstance(ch, dict):
                parts.append((str(ch.get("title") or ""), str(ch.get("text") or "")))
            else:
                parts.append(("", str(ch)))
        text = ""
    else:
        parts, text = [], str(rec.get(opts.field) or "")
    ch_sums = rec.get(opts.chapter_summaries_field) or []
    if not isinstance(ch_sums, list):
        ch_sums = []
    book_id = str(rec.get("id") or rec.get("title") or where)
    summary = str(rec.get(opts.summary_field) or "")
    if parts:
        return Book(book_id, where, parts, "", summary, [str(s) for s in ch_sums], True)
    return book_from_text(book_id, where, text, summary, [str(s) for s in ch_sums])


def read_books(opts: Options, counts: Counter) -> Iterator[Book]:
    """Books from paired files and/or JSONL under ``opts.input`` (see the module docstring)."""
    from data_builders.mix import iter_records

    path = opts.input
    if not path.exists():
        raise LongqaError(f"input not found: {path}")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = file.name
        if file.suffix in (".jsonl", ".json") and name != "stats.json":
            for src, line, rec in iter_records(file, counts, opts.strict):
                yield _record_book(rec, f"{src}:{line}", opts)
        elif file.suffix in _BOOK_SUFFIXES and ".summary." not in name:
            text = file.read_text(encoding="utf-8", errors="replace")
            summary_path = _summary_file(file)
            summary = (
                summary_path.read_text(encoding="utf-8", errors="replace") if summary_path else ""
            )
            if summary_path and not summary.strip() and text.strip():
                counts["empty"] += 1
                continue
            yield book_from_text(file.stem, str(file), text, summary, [])
        elif ".summary." in name:
            book = file.with_name(name.replace(".summary", ""))
            if not any(book.with_suffix(s).exists() for s in _BOOK_SUFFIXES):
                counts["summary_without_book"] += 1


# ----------------------------------------------------------------------------- build


def build(options: Options) -> dict:
    """Write book-summary samples to ``options.out``; returns the stats (also stats.json)."""
    from data_builders.writer import ShardWriter, length_histogram, write_stats
    from longqa.data.tokens import get_token_counter

    counter = get_token_counter(options.tokenizer)
    counts: Counter = Counter()
    lengths: list[int] = []
    langs: Counter = Counter()
    books = 0
    with ShardWriter(options.out, shard_size=options.shard_size) as writer:
        for book in read_books(options, counts):
            books += 1
            for j, sample in enumerate(book_samples(book, options, counter.count, counts)):
                if options.max_samples and len(lengths) >= options.max_samples:
                    break
                sample["id"] = f"book-{_slug(book.id)}-{j:03d}"
                writer.write(sample)
                lengths.append(sample["meta"]["tokens"])
                langs[sample["lang"]] += 1
    informational = {"no_chapter_markers", "truncated", "chapter_summaries_ignored"}
    stats = {
        "task": TASK,
        "books": books,
        "samples": len(lengths),
        "languages": dict(langs),
        "skipped": {k: v for k, v in sorted(counts.items()) if v and k not in informational},
        "no_chapter_markers": counts["no_chapter_markers"],
        "truncated": counts["truncated"],
        "chapter_summaries_ignored": counts["chapter_summaries_ignored"],
        "tokenizer": counter.name,
        "target_tokens": options.target_tokens,
        "length_histogram": length_histogram(lengths),
    }
    write_stats(options.out, stats)
    return stats


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9\u4e00-\u9fff]+", "-", text).strip("-")[:60] or "book"
