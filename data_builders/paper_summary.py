"""Paper summaries: the paper's body is the instruction, its abstract the answer (``--task paper-summary``).

Input (``--input PATH``): a folder of papers as ``.md``/``.txt`` files (the abstract is a section
headed "Abstract"/"摘要", or a paragraph starting "Abstract:"/"摘要："), a JSONL file (or folder)
with the paper in ``text`` and optionally the abstract in ``abstract``, or Parquet / a saved
``datasets`` folder (text column only). The abstract is always REMOVED from the body given as the
instruction (its section, or any verbatim copy of a separately given abstract), so the model must
write it, not copy it.

Malformed input is skipped and counted in stats.json under ``skipped``: a paper without an
abstract → ``no_abstract``; an empty file or record → ``empty``; an abstract shorter than
``min_abstract_words`` → ``abstract_too_short``; a body shorter than ``min_body_words`` after the
abstract is removed → ``body_too_short``; a sample longer than ``target_tokens`` → ``too_long``;
an unreadable JSONL line → ``bad_line`` (``strict=true`` fails instead, naming file and line).
Words are words for English and characters for Chinese.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data_builders.text import count_words, detect_lang
from longqa.core.errors import LongqaError

TASK = "paper-summary"

_LABEL = r"(?:abstract|ABSTRACT|Abstract|摘\s*要)"
_HEADING_ABSTRACT = re.compile(
    rf"^[ \t]*(?:#{{1,6}}[ \t]*)?(?:\*\*)?{_LABEL}(?:\*\*)?[ \t]*[:：.]?[ \t]*$", re.MULTILINE
)
_INLINE_ABSTRACT = re.compile(
    rf"^[ \t]*(?:\*\*)?{_LABEL}(?:\*\*)?[ \t]*(?:[:：.—–]|--?)[ \t]*(?:\*\*)?[ \t]*(?=\S)",
    re.MULTILINE,
)
_SECTION = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]+\S.*"
    r"|(?:\d+(?:\.\d+)*\.?|[IVX]+\.)[ \t]+[A-Z\u4e00-\u9fff].{0,80}"
    r"|(?:Introduction|INTRODUCTION|Keywords|KEYWORDS|Key words|Index Terms|Background)\b.{0,80}"
    r"|(?:关键词|关键字|引言|前言|[一二三四五六七八九十]+[、.．]).{0,80})$",
    re.MULTILINE,
)

INSTRUCTIONS = {
    "en": "Write the abstract of the paper above.",
    "zh": "请为以上论文撰写摘要。",
}


class Options(BaseModel):
    """Flags of ``longqa build-data --task paper-summary``."""

    model_config = ConfigDict(extra="forbid")
    input: Path = Field(
        description="folder of papers (.md/.txt), JSONL, Parquet or datasets folder"
    )
    out: Path
    target_tokens: int = Field(32768, gt=0, description="longest sample, in tokens")
    tokenizer: str = Field("smollm2-135m", description="tokenizer name/path/alias for lengths")
    field: str = "text"
    abstract_field: str = "abstract"
    min_abstract_words: int = Field(20, ge=1)
    min_body_words: int = Field(100, ge=1)
    lang: Literal["auto", "en", "zh"] = "auto"
    system_prompt: str = "You are a helpful assistant."
    max_samples: int | None = Field(None, gt=0)
    strict: bool = False
    shard_size: int = Field(1000, ge=1)


@dataclass
class Paper:
    id: str
    source: str
    text: str
    abstract: str = ""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def split_abstract(text: str) -> tuple[str, str] | None:
    """``(abstract, body_without_abstract)`` of a paper's text, or ``None`` when it has none.

    The abstract starts at an "Abstract"/"摘要" heading line (Markdown or plain) or a paragraph
    labelled "Abstract:"/"Abstract." and ends at the next section heading ("1 Introduction",
    "## Method", "Keywords", "关键词", …); without a later heading it is the first paragraph.
    """
    head = _HEADING_ABSTRACT.search(text)
    inline = _INLINE_ABSTRACT.search(text)
    if head and (not inline or head.start() <= inline.start()):
        start, content_start = head.start(), head.end()
    elif inline:
        start, content_start = inline.start(), inline.end()
    else:
        return None
    rest = text[content_start:]
    nxt = _SECTION.search(rest, pos=len(rest) - len(rest.lstrip()))
    if nxt:
        end = content_start + nxt.start()
    else:
        para = re.search(r"\n[ \t]*\n", rest.lstrip("\n"))
        end = content_start + (len(rest) - len(rest.lstrip("\n"))) + para.start() if para else None
        end = end if end is not None else len(text)
    abstract = text[content_start:end].strip()
    if not abstract:
        return None
    body = (text[:start].rstrip() + "\n\n" + text[end:].lstrip()).strip()
    return abstract, body


def remove_copies(body: str, abstract: str) -> str:
    """``body`` without any verbatim (whitespace-normalised) copy of ``abstract``."""
    target = _norm(abstract)
    if not target:
        return body
    words = target.split(" ")
    pattern = r"\s+".join(re.escape(w) for w in words)
    label = rf"(?:^[ \t]*(?:#{{1,6}}[ \t]*)?{_LABEL}[ \t]*[:：.]?[ \t]*\n?)?"
    body = re.sub(label + pattern, "", body, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def paper_parts(paper: Paper) -> tuple[str, str] | str:
    """``(abstract, body)`` with the abstract removed from the body, or a skip reason."""
    text = paper.text.strip()
    if not text and not paper.abstract.strip():
        return "empty"
    found = split_abstract(text) if text else None
    if paper.abstract.strip():
        abstract = paper.abstract.strip()
        body = found[1] if found else text
    elif found:
        abstract, body = found
    else:
        return "no_abstract"
    body = remove_copies(body, abstract)
    if not body:
        return "empty"
    return abstract, body


# ----------------------------------------------------------------------------- reading papers


def read_papers(
    path: Path, counts: Counter, *, text_field: str, abstract_field: str, strict: bool
) -> Iterator[Paper]:
    """Papers under ``path``: .md/.txt files, JSONL/JSON records, Parquet or a datasets folder."""
    from data_builders.corpus import iter_raw_documents
    from data_builders.mix import iter_records
    from longqa.data.sources import is_saved_dataset

    if not path.exists():
        raise LongqaError(f"input not found: {path}")
    if is_saved_dataset(path):
        for where, text in iter_raw_documents(path, field=text_field, strict=strict):
            yield Paper(where, where, text)
        return
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name.startswith(".") or file.name == "stats.json":
            continue
        suffix = file.suffix.lower()
        if suffix in (".jsonl", ".json"):
            for src, line, rec in iter_records(file, counts, strict):
                text, abstract = rec.get(text_field), rec.get(abstract_field)
                if not isinstance(text, str) or (
                    abstract is not None and not isinstance(abstract, str)
                ):
                    if strict:
                        raise LongqaError(f"{src}:{line}: field '{text_field}' must be a string")
                    counts["bad_line"] += 1
                    continue
                pid = str(rec.get("id") or rec.get("title") or f"{Path(src).stem}-{line}")
                yield Paper(pid, f"{src}:{line}", text, abstract or "")
        elif suffix in (".md", ".txt", ".markdown"):
            text = file.read_text(encoding="utf-8", errors="replace")
            yield Paper(file.stem, str(file), text)
        elif suffix == ".parquet":
            for where, text in iter_raw_documents(file, field=text_field, strict=strict):
                yield Paper(where, where, text)


# ----------------------------------------------------------------------------- build


def make_sample(
    instruction_text: str, answer: str, lang: str, system_prompt: str, task: str, meta: dict
) -> dict:
    """A schema sample (no id yet): optional system turn, user turn, assistant turn."""
    messages = [
        {"role": "user", "content": instruction_text},
        {"role": "assistant", "content": answer},
    ]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"task": task, "lang": lang, "messages": messages, "meta": meta}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9\u4e00-\u9fff]+", "-", text).strip("-")[:60] or "doc"


def build(options: Options) -> dict:
    """Write paper-summary samples to ``options.out``; returns the stats (also stats.json)."""
    from data_builders.corpus import clean_text
    from data_builders.writer import ShardWriter, length_histogram, write_stats
    from longqa.data.tokens import get_token_counter

    counter = get_token_counter(options.tokenizer)
    counts: Counter = Counter()
    langs: Counter = Counter()
    lengths: list[int] = []
    papers = 0
    seen: Counter = Counter()
    with ShardWriter(options.out, shard_size=options.shard_size) as writer:
        for paper in read_papers(
            options.input,
            counts,
            text_field=options.field,
            abstract_field=options.abstract_field,
            strict=options.strict,
        ):
            papers += 1
            paper.text, paper.abstract = clean_text(paper.text), clean_text(paper.abstract)
            parts = paper_parts(paper)
            if isinstance(parts, str):
                counts[parts] += 1
                continue
            abstract, body = parts
            lang = options.lang if options.lang != "auto" else detect_lang(body)
            if count_words(abstract) < options.min_abstract_words:
                counts["abstract_too_short"] += 1
                continue
            if count_words(body) < options.min_body_words:
                counts["body_too_short"] += 1
                continue
            user = f"{body}\n\n{INSTRUCTIONS[lang]}"
            n_tokens = counter.count(options.system_prompt + user + abstract)
            if n_tokens > options.target_tokens:
                counts["too_long"] += 1
                continue
            if options.max_samples and len(lengths) >= options.max_samples:
                break
            meta = {"paper_id": paper.id, "source": paper.source, "tokens": n_tokens}
            meta |= {"body_words": count_words(body), "abstract_words": count_words(abstract)}
            sample = make_sample(user, abstract, lang, options.system_prompt, TASK, meta)
            base = slug(paper.id)
            sample["id"] = f"psum-{base}" + (f"-{seen[base]}" if seen[base] else "")
            seen[base] += 1
            writer.write(sample)
            lengths.append(n_tokens)
            langs[lang] += 1
    stats = {
        "task": TASK,
        "papers": papers,
        "samples": len(lengths),
        "languages": dict(langs),
        "skipped": dict(sorted(counts.items())),
        "tokenizer": counter.name,
        "length_histogram": length_histogram(lengths),
    }
    write_stats(options.out, stats)
    return stats
