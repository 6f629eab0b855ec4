"""Paper QA: the whole paper plus a question about one passage → the answer (``--task paper-qa``).

For each paper a random passage of at most ``max_passage_words`` words (characters for Chinese;
default 4000) is picked at paragraph boundaries; a generator writes a question-answer pair about it;
the sample's instruction is the WHOLE paper followed by the question, and the answer is the output.

Generators: ``llm`` (any OpenAI-compatible endpoint, ``--base-url``/``--model``; responses cached in
``<out>/llm_cache.sqlite`` so a rerun costs nothing) asks for a JSON object; ``extractive`` works
offline and deterministically from ``--seed``: it takes a salient sentence span of the passage,
quotes its shortest opening found nowhere else in the paper, and asks how it continues. With
``answer_style=quote-first`` the answer first gives the supporting original text, then the answer
(the paraphrasing style), and the quote must verify against the passage: an answer is asked
up to ``max_attempts`` times in all, then the pair is dropped and counted.

Input: the same papers as ``paper-summary`` (``.md``/``.txt`` folder, JSONL with ``text``, Parquet,
datasets folder). Malformed input is skipped and counted in stats.json under ``skipped``: empty
paper → ``empty``; fewer than ``min_paper_words`` words → ``too_short``; whole paper + question over
``target_tokens`` → ``too_long``; unreadable JSONL line → ``bad_line`` (``strict`` fails instead);
an LLM answer that is not valid JSON or whose quote is not in the passage → ``rejected`` reasons.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from pathlib import Path
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data_builders.text import count_words, detect_lang
from longqa.data.llm import run_sync

TASK = "paper-qa"
PROMPTS_DIR = Path(__file__).parent / "prompts"

PROMPTS = {
    "en": (
        "Below is a passage from a paper.\n\n<passage>\n{passage}\n</passage>\n\n"
        "Write one question that a reader of the whole paper could ask and that this passage "
        "answers. {style}\nReply with a JSON object only: {schema}"
    ),
    "zh": (
        "下面是一篇论文中的一段。\n\n<passage>\n{passage}\n</passage>\n\n"
        "请提出一个读者读完整篇论文后可能会问、且这段文字能够回答的问题。{style}\n"
        "只输出一个 JSON 对象：{schema}"
    ),
}
STYLE = {
    ("en", "quote-first"): "Copy into original_text, word for word, the sentence(s) of the passage "
    "that support the answer; then give the answer in answer.",
    ("en", "plain"): "Give a complete, accurate answer in answer.",
    (
        "zh",
        "quote-first",
    ): "在 original_text 中逐字摘抄段落中支持答案的原文句子，再在 answer 中给出答案。",
    ("zh", "plain"): "在 answer 中给出完整准确的答案。",
}
SCHEMA = {
    "quote-first": '{"question": "...", "original_text": "...", "answer": "..."}',
    "plain": '{"question": "...", "answer": "..."}',
}
INSTRUCTION = {
    ("en", "plain"): "{paper}\n\nAnswer the question based on the paper above.\n\nQuestion: {q}",
    ("en", "quote-first"): "{paper}\n\nAnswer the question based on the paper above. First quote "
    "the original text of the paper that supports the answer, then answer.\n\nQuestion: {q}",
    ("zh", "plain"): "{paper}\n\n请根据以上论文回答问题。\n\n问题：{q}",
    ("zh", "quote-first"): "{paper}\n\n请根据以上论文回答问题。先引用论文中支持答案的原文，再回答。"
    "\n\n问题：{q}",
}
EXTRACTIVE_Q = {
    "en": 'The paper contains a passage that begins with "{head}". How does it continue?',
    "zh": "论文中有一段话以“{head}”开头。它接下来说了什么？",
}
EXTRACTIVE_A = {"en": "It continues: {tail}", "zh": "它接着说：{tail}"}


class Options(BaseModel):
    """Flags of ``longqa build-data --task paper-qa``."""

    model_config = ConfigDict(extra="forbid")
    input: Path = Field(description="papers: .md/.txt folder, JSONL, Parquet or datasets folder")
    out: Path
    generator: Literal["llm", "extractive"] = "llm"
    answer_style: Literal["plain", "quote-first"] = "plain"
    base_url: str | None = None
    model: str | None = None
    concurrency: int = Field(16, ge=1)
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="structured-output dialect of the server (auto: detect)"
    )
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    cache: Path | None = Field(None, description="SQLite response cache (default <out>/llm_cache)")
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(1024, gt=0)
    max_attempts: int = Field(3, ge=1, description="LLM tries per QA pair")
    max_passage_words: int = Field(4000, gt=0, description="words, or characters for Chinese")
    min_paper_words: int = Field(100, ge=1)
    qa_per_paper: int = Field(1, ge=1)
    quote_threshold: float = Field(0.9, gt=0, le=1, description="fuzzy quote match ratio")
    target_tokens: int = Field(32768, gt=0)
    tokenizer: str = "smollm2-135m"
    field: str = "text"
    lang: Literal["auto", "en", "zh"] = "auto"
    system_prompt: str = "You are a helpful assistant."
    max_samples: int | None = Field(None, gt=0)
    seed: int = 0
    strict: bool = False
    shard_size: int = Field(1000, ge=1)
    progress: bool = True


# ----------------------------------------------------------------------------- passages


def _units(text: str, limit: int) -> list[str]:
    """Paragraphs; a paragraph longer than ``limit`` words becomes its sentences (then words)."""
    from data_builders.corpus import split_sentences

    out: list[str] = []
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if count_words(para) <= limit:
            out.append(para)
            continue
        for sent in split_sentences(para):
            if count_words(sent) <= limit:
                out.append(sent)
            else:  # one enormous "sentence": cut by words (characters for Chinese)
                pieces = re.findall(r"\S+\s*", sent) if " " in sent else list(sent)
                for i in range(0, len(pieces), limit):
                    out.append("".join(pieces[i : i + limit]).strip())
    return out


def pick_passage(text: str, max_words: int, rng: random.Random) -> tuple[str, int]:
    """A random run of consecutive paragraphs of at most ``max_words`` words; ``(passage, start)``.

    ``start`` is the index of its first paragraph. The whole text when it is short enough.
    """
    units = _units(text, max_words)
    if count_words(text) <= max_words:
        return "\n\n".join(units), 0
    sizes = [count_words(u) for u in units]
    start = rng.randrange(len(units))
    lo, hi, used = start, start + 1, sizes[start]
    while hi < len(units) and used + sizes[hi] <= max_words:
        used += sizes[hi]
        hi += 1
    while lo > 0 and used + sizes[lo - 1] <= max_words:
        lo -= 1
        used += sizes[lo]
    return "\n\n".join(units[lo:hi]), lo


def extractive_qa(passage: str, paper: str, lang: str, rng: random.Random) -> dict[str, str] | None:
    """An offline QA pair about ``passage``: ``{"question", "original_text", "answer"}``.

    A salient sentence span of the passage (:func:`data_builders.extractive.pick_salient_span`) is
    the original text; the question quotes its shortest opening that occurs nowhere else in the
    paper and asks how it continues; the answer is the rest of the span.
    """
    from data_builders.extractive import pick_salient_span, unique_prefix

    span = pick_salient_span(passage, rng, lang=lang)
    if span is None:
        return None
    rest_of_paper = paper.replace(span.text, "", 1)
    prefix = unique_prefix(span.text, [rest_of_paper], lang=lang)
    if prefix is None:
        return None
    tail = span.text[len(prefix) :].strip() if span.text.startswith(prefix) else span.text
    if not tail:
        return None
    return {
        "question": EXTRACTIVE_Q[lang].format(head=prefix),
        "original_text": span.text,
        "answer": EXTRACTIVE_A[lang].format(tail=tail),
    }


def render_answer(qa: dict[str, str], lang: str, style: str) -> str:
    """The assistant turn: quote first, then the answer (``quote-first``, the shipped
    ``prompts/<lang>/answer.txt`` template), or the answer alone (``plain``)."""
    if style == "quote-first":
        template = Template((PROMPTS_DIR / lang / "answer.txt").read_text(encoding="utf-8"))
        return template.substitute(
            quote=qa["original_text"].strip(), answer=qa["answer"].strip()
        ).strip()
    return qa["answer"].strip()


def llm_messages(passage: str, lang: str, style: str) -> list[dict[str, str]]:
    prompt = PROMPTS[lang].format(passage=passage, style=STYLE[(lang, style)], schema=SCHEMA[style])
    return [{"role": "user", "content": prompt}]


# ----------------------------------------------------------------------------- generation


async def _llm_qa(
    client: Any, passage: str, lang: str, opts: Options, salt: int, reasons: Counter
) -> dict[str, str] | None:
    """Ask up to ``max_attempts`` times; a quote must verify against the passage (a near-verbatim
    one is replaced by the passage's own words, so every kept quote is a true copy)."""
    from data_builders.verify import verify_quote
    from longqa.data.llm import LLMError, parse_json_object
    from longqa.data.response_format import object_schema

    quoting = opts.answer_style == "quote-first"
    required = ("question", "original_text", "answer") if quoting else ("question", "answer")
    for attempt in range(opts.max_attempts):
        try:
            reply = await client.acomplete(
                llm_messages(passage, lang, opts.answer_style),
                temperature=opts.temperature,
                max_tokens=opts.max_new_tokens,
                json_mode=True,
                schema=object_schema(required, name="qa"),
                seed=salt * 100 + attempt,
            )
        except LLMError as exc:
            reasons[f"request failed: {str(exc).split(' after')[0]}"] += 1
            continue
        obj, reason = parse_json_object(reply.text, required=required)
        if obj is None:
            reasons[str(reason)] += 1
            continue
        qa = {k: str(obj[k]) for k in required}
        if quoting:
            match = verify_quote(qa["original_text"], passage, threshold=opts.quote_threshold)
            if not match.ok:
                reasons["quote not in passage"] += 1
                continue
            qa["original_text"] = match.text
        return qa
    return None


# ----------------------------------------------------------------------------- build


def _jobs(options: Options, counts: Counter, counter: Any) -> Any:
    """``(sample_id, paper, k, passage, start, lang)`` for every QA pair to make, in input order."""
    from data_builders.corpus import clean_text
    from data_builders.paper_summary import read_papers, slug

    seen: Counter = Counter()
    for paper in read_papers(
        options.input,
        counts,
        text_field=options.field,
        abstract_field="",
        strict=options.strict,
    ):
        counts["papers"] += 1
        text = clean_text(paper.text)
        if not text:
            counts["empty"] += 1
            continue
        if count_words(text) < options.min_paper_words:
            counts["too_short"] += 1
            continue
        if counter.count(options.system_prompt + text) + 256 > options.target_tokens:
            counts["too_long"] += 1
            continue
        lang = options.lang if options.lang != "auto" else detect_lang(text)
        base = slug(paper.id)
        base = f"{base}-{seen[base]}" if seen[base] else base
        seen[slug(paper.id)] += 1
        for k in range(options.qa_per_paper):
            rng = random.Random(f"{options.seed}:{paper.id}:{k}")
            passage, start = pick_passage(text, options.max_passage_words, rng)
            yield f"pqa-{base}-{k}", paper, text, passage, start, lang, rng


def build(options: Options) -> dict:
    """Write paper-QA samples to ``options.out``; returns the stats (also stats.json)."""
    from data_builders.paper_summary import make_sample
    from data_builders.writer import ShardWriter, length_histogram, write_stats
    from longqa.data.tokens import get_token_counter

    counts: Counter = Counter()
    reasons: Counter = Counter()
    langs: Counter = Counter()
    lengths: list[int] = []
    client = None
    if options.generator == "llm":
        from longqa.core.errors import LongqaError
        from longqa.data.llm import LLMClient

        if not options.model:
            raise LongqaError("--generator llm needs --model (or use --generator extractive)")
        options.out.mkdir(parents=True, exist_ok=True)
        client = LLMClient(
            base_url=options.base_url,
            model=options.model,
            concurrency=options.concurrency,
            response_format=options.response_format,
            timeout=options.timeout,
            max_retries=options.max_retries,
            cache_path=options.cache or options.out / "llm_cache.sqlite",
        )

    counter = get_token_counter(options.tokenizer)

    def emit(writer: Any, job: tuple, qa: dict[str, str] | None) -> None:
        sid, paper, text, passage, start, lang, _ = job
        if qa is None:
            counts["dropped"] += 1
            return
        instruction = INSTRUCTION[(lang, options.answer_style)].format(paper=text, q=qa["question"])
        answer = render_answer(qa, lang, options.answer_style)
        n_tokens = counter.count(options.system_prompt + instruction + answer)
        if n_tokens > options.target_tokens:
            counts["too_long"] += 1
            return
        meta = {
            "paper_id": paper.id,
            "source": paper.source,
            "generator": options.generator,
            "answer_style": options.answer_style,
            "passage_start_paragraph": start,
            "passage_words": count_words(passage),
            "passage_depth": round(max(0, text.find(passage.split("\n\n")[0])) / len(text), 4),
            "original_text": qa.get("original_text"),
            "tokens": n_tokens,
        }
        sample = make_sample(instruction, answer, lang, options.system_prompt, TASK, meta)
        sample["id"] = sid
        writer.write(sample)
        lengths.append(n_tokens)
        langs[lang] += 1

    async def run_batch(batch: list[tuple]) -> list[dict[str, str] | None]:
        async def one(job: tuple) -> dict[str, str] | None:
            salt = random.Random(job[0]).randrange(1 << 30)
            return await _llm_qa(client, job[3], job[5], options, salt, reasons)

        try:
            return await asyncio.gather(*(one(j) for j in batch))
        finally:
            await client.aclose()  # each batch runs in its own event loop

    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    line = "[bold]paper-qa[/] {task.completed} pairs, dropped {task.fields[bad]}"
    progress = Progress(TextColumn(line), TimeElapsedColumn(), disable=not options.progress)
    bar = progress.add_task("build", total=None, bad=0)

    with progress, ShardWriter(options.out, shard_size=options.shard_size) as writer:
        done = writer.done_ids()
        batch: list[tuple] = []

        def flush() -> None:
            results = run_sync(run_batch(batch))
            for job, qa in zip(batch, results, strict=True):
                emit(writer, job, qa)
            progress.update(bar, advance=len(batch), bad=counts["dropped"])
            batch.clear()

        for job in _jobs(options, counts, counter):
            if options.max_samples and counts["made"] >= options.max_samples:
                break
            counts["made"] += 1
            if job[0] in done:
                counts["already_done"] += 1
                continue
            if client is None:
                qa = extractive_qa(job[3], job[2], job[5], job[6])
                if qa is None:
                    reasons["no usable sentence in passage"] += 1
                emit(writer, job, qa)
                progress.update(bar, advance=1, bad=counts["dropped"])
            else:
                batch.append(job)
                if len(batch) >= options.concurrency * 4:
                    flush()
        if batch:
            flush()
    papers = counts.pop("papers", 0)
    counts.pop("made", None)
    stats = {
        "task": TASK,
        "generator": options.generator,
        "answer_style": options.answer_style,
        "papers": papers,
        "samples": len(writer),
        "written_this_run": len(lengths),
        "already_done": counts.pop("already_done", 0),
        "languages": dict(langs),
        "skipped": dict(sorted(counts.items())),
        "rejected": dict(sorted(reasons.items())),
        "llm_usage": client.usage.as_dict() if client else None,
        "tokenizer": counter.name,
        "length_histogram": length_histogram(lengths),
    }
    write_stats(options.out, stats)
    return stats
