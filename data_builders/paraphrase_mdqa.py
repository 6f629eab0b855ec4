"""W-shaped multi-document QA with original-text paraphrasing (``--task paraphrase-mdqa``).

Recipe (Yu, "Training With 'Paraphrasing the Original Text' Improves Long-Context Performance",
arXiv:2312.11193), every number an option: the corpus is split into passages of at most
``max_doc_tokens``; sample *i* takes a group of ``docs_per_group`` documents whose first ``turns``
are the relevant ones; a question-answer pair is written for each relevant document (the answer
first quotes the document's original text, then answers); the documents go into a numbered list
and irrelevant ones are randomly removed until the sample fits ``target_tokens`` (in tokens of
``tokenizer``); the pairs become the turns of one conversation over that list.

Beyond the paper: quotes are verified against the document (exact after normalisation, or
near-verbatim at ``quote_threshold``, then replaced by the verbatim span) and regenerated up to
``max_attempts`` times, then the turn is dropped and counted; relevant documents sit at depths spread
uniformly over the context (recorded in ``meta``); a ``negative_ratio`` share of turns ask about a
document removed from the list (answer: no document says so); ``cite_index`` makes the answer name
the document number; ``generator="extractive"`` needs no LLM (salient span → locate-and-quote
question), deterministic for a seed. ``neutral_questions`` makes every ``answer_style`` share one
layout and one question wording (the layout is fitted with the longest, quoting form), so samples of
two styles differ in their answers only. Samples whose length ends outside
``[target_tokens * (1 - length_tolerance), target_tokens]`` are dropped and counted.

Output in ``out``: JSONL shards (``data_builders.writer``), ``stats.json`` with counts, length and
depth histograms, rejection reasons and the effective-token share (assistant tokens that are
verified verbatim quotes). Reruns resume: finished sample ids are skipped, LLM answers come from
``<out>/llm_cache.sqlite``. Call ``build(Options(corpus=..., out=...))`` from Python.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data_builders import mdqa_sample as ms
from data_builders.corpus import Corpus, Document
from longqa.data.tokens import TokenCounter, count_messages

TASK = "paraphrase-mdqa"


class Options(BaseModel):
    """Options of ``longqa build-data --task paraphrase-mdqa`` (flag = field name with dashes)."""

    model_config = ConfigDict(extra="forbid")
    corpus: str = Field(description="folder/file of .txt/.md/.jsonl/.parquet or a datasets folder")
    out: str = Field(description="output folder (JSONL shards + stats.json)")
    generator: Literal["llm", "extractive"] = "llm"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (llm generator)")
    model: str | None = Field(None, description="served model name (llm generator)")
    num_samples: int = Field(1000, ge=1)
    target_tokens: int = Field(8192, ge=256)
    length_tolerance: float = Field(0.15, gt=0, lt=1, description="band below target_tokens")
    tokenizer: str = Field("smollm2-135m", description="alias/path/hub id, or 'approx'")
    docs_per_group: int = Field(100, ge=2)
    max_doc_tokens: int = Field(1024, ge=32)
    min_doc_chars: int = Field(50, ge=0)
    turns: int = Field(5, ge=1)
    min_turns: int = Field(1, ge=1, description="drop a sample with fewer valid turns")
    negative_ratio: float = Field(0.1, ge=0, le=1)
    cite_index: bool = Field(False, description="answers name the document number (llm)")
    answer_style: Literal[
        "paraphrase", "paraphrase-index", "plain", "index-detailed", "detailed", "wrong-quote"
    ] = Field(
        "paraphrase",
        description="plain: answers without the quote (a control set for analysis); "
        "paraphrase-index: document number and quote, then answer; "
        "wrong-quote: an equally long span of a distractor, then answer (a control); "
        "index-detailed: document number, then answer; detailed: answer only",
    )
    question_style: Literal["prefix", "scattered"] = Field(
        "prefix",
        description="neutral extractive questions name the passage by its opening words (prefix) "
        "or by keywords scattered over it, sharing no run of 5 words with it (scattered)",
    )
    neutral_questions: bool = Field(
        False,
        description="prompts and questions ask for no answer form (extractive: a word-choice "
        "question), so the answer form is taught by the answers alone; the documents, questions "
        "and gold documents are the same for every answer_style (for ablations)",
    )
    lang: Literal["en", "zh", "auto"] = "auto"
    seed: int = 0
    quote_threshold: float = Field(0.9, gt=0, le=1)
    min_quote_chars: int = Field(20, ge=1)
    max_attempts: int = Field(3, ge=1, description="LLM tries per turn before dropping it")
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(768, ge=16)
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="structured-output dialect of the server (auto: detect)"
    )
    max_draws: int | None = Field(
        None, ge=1, description="sample ids tried to reach --num-samples (default 2·N + 8)"
    )
    concurrency: int = Field(16, ge=1)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    cache: str | None = Field(None, description="SQLite response cache (default <out>/llm_cache)")
    price_input: float = Field(0.0, ge=0, description="$ per 1M prompt tokens")
    price_output: float = Field(0.0, ge=0, description="$ per 1M completion tokens")
    field: str = Field("text", description="text field of JSONL/Parquet/datasets input")
    strict: bool = False
    shard_size: int = Field(1000, ge=1)
    progress: bool = True


def sample_id(i: int) -> str:
    return f"pmdqa-{i:06d}"


class SampleContext:
    """What every sample of one build shares: options, documents, token counter, LLM client."""

    def __init__(self, opts: Options, corpus: Corpus, counter: TokenCounter, client: Any) -> None:
        self.opts, self.docs, self.counter, self.client = opts, corpus.docs, counter, client
        order = list(range(len(self.docs)))
        random.Random(f"{opts.seed}:corpus").shuffle(order)
        self.order = order
        self.doc_overhead = counter.count(
            ms.prompts("en")["document"].substitute(index=100, text="")
        )
        self.doc_overhead += 2

    def group(self, i: int) -> list[Document]:
        n, g = len(self.docs), min(self.opts.docs_per_group, len(self.docs))
        return [self.docs[self.order[(i * g + k) % n]] for k in range(g)]


async def make_sample(ctx: SampleContext, i: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Build sample ``i`` (deterministic given the seed and cache): ``(sample, info)`` where
    ``sample`` is None when dropped and ``info`` holds the reason and rejection counts."""
    opts, rng = ctx.opts, random.Random(f"{ctx.opts.seed}:{i}")
    group = ctx.group(i)
    picked = group[: min(opts.turns, len(group) - 1)]
    negative = [rng.random() < opts.negative_ratio for _ in picked]
    negative[0] = negative[0] and not all(negative)  # every sample keeps a positive turn
    lang = opts.lang if opts.lang != "auto" else picked[0].lang
    if opts.generator == "llm":
        coros = [
            ms.llm_turn(ctx.client, d, neg, lang, opts)
            for d, neg in zip(picked, negative, strict=False)
        ]
        turns = list(await asyncio.gather(*coros))
    else:
        turns = [
            ms.extractive_turn(d, neg, lang, rng) for d, neg in zip(picked, negative, strict=False)
        ]
    rejections = Counter(r for t in turns for r in t.rejections)
    failed = [t.failed for t in turns if t.failed]
    turns = [t for t in turns if not t.failed]
    while len(turns) > 1 and _skeleton_tokens(ctx, turns, lang) > opts.target_tokens:
        turns.pop()  # the relevant documents alone overflow the target length
        failed.append("no room at target length")
    info: dict[str, Any] = {"rejections": dict(rejections), "dropped_turns": dict(Counter(failed))}
    if len(turns) < opts.min_turns or all(t.negative for t in turns):
        return None, {**info, "reason": "too few valid turns"}
    positives = [t for t in turns if not t.negative]
    u = rng.random()
    slots = [(j + u) / len(positives) for j in range(len(positives))]
    rng.shuffle(slots)
    for t, d in zip(positives, slots, strict=False):
        t.target_depth = d
    excluded = {t.doc.id for t in turns} | {t.doc.source for t in turns if t.negative}
    pool = [d for d in group if d.id not in excluded and d.source not in excluded]
    sample, why = _fit(ctx, i, turns, positives, pool, excluded, lang, rng)
    if sample is None:
        return None, {**info, "reason": why}
    sample["meta"]["rejections"] = info["rejections"]
    sample["meta"]["dropped_turns"] = info["dropped_turns"]
    return sample, info


def _skeleton_tokens(ctx: SampleContext, turns: list[ms.Turn], lang: str) -> int:
    """Tokens of the sample with its relevant documents only (no distractors)."""
    if ctx.opts.generator == "extractive":
        for t in turns:
            t.question = t.question or t.span  # worst-case length until the hint is chosen
    docs = [t.doc for t in turns if not t.negative]
    msgs = ms.render(docs, turns, lang, **_render_args(ctx.opts, fitting=True))
    return count_messages(msgs, ctx.counter)


def _render_args(opts: Options, fitting: bool = False) -> dict[str, Any]:
    """Keyword arguments of :func:`ms.render`; with ``neutral_questions`` the layout is fitted
    with the quoting form whatever the answer style, so every style gets the same documents."""
    form = "paraphrase" if fitting and opts.neutral_questions else opts.answer_style
    return {
        "cite_index": opts.cite_index,
        "extractive": opts.generator == "extractive",
        "form": form,
        "neutral": opts.neutral_questions,
    }


def _fit(ctx, i, turns, positives, pool, excluded, lang, rng):  # noqa: ANN001, ANN202
    """Lay out, render, and adjust the distractors until the length is in the target band."""
    opts, counter = ctx.opts, ctx.counter
    low = int(opts.target_tokens * (1 - opts.length_tolerance))
    rel_docs = [t.doc for t in positives]
    skeleton = _skeleton_tokens(ctx, turns, lang)
    fixed = skeleton - sum(d.n_tokens + ctx.doc_overhead for d in rel_docs)
    budget = opts.target_tokens - fixed - 4
    docs = ms.layout(positives, pool, budget, ctx.doc_overhead, rng)
    if sum(d.n_tokens + ctx.doc_overhead for d in docs) + fixed < low:  # top up from the corpus
        ids = {d.id for d in docs} | {d.id for d in pool}
        extra = [d for d in ctx.docs if d.id not in ids and d.id not in excluded]
        extra = [d for d in extra if d.source not in excluded]
        extra = rng.sample(extra, min(len(extra), 4 * opts.docs_per_group))
        distractors = [d for d in docs if d.id not in {t.doc.id for t in positives}]
        docs = ms.layout(positives, distractors + extra, budget, ctx.doc_overhead, rng)
    for _ in range(20):
        if opts.generator == "extractive":
            kept = []
            for t in turns:
                others = [d.text for d in docs if d.id != t.doc.id]
                ask = None
                if opts.neutral_questions:
                    scattered = opts.question_style == "scattered"
                    ask = (
                        ms.scattered_choice_question if scattered else ms.extractive_choice_question
                    )
                t.question = (ask or ms.extractive_question)(t, others, lang, rng) or ""
                if t.question:
                    kept.append(t)
            if len(kept) < opts.min_turns or all(t.negative for t in kept):
                return None, "no unique question hint"
            turns = kept
        messages = ms.render(docs, turns, lang, **_render_args(opts, fitting=True))
        n_tokens = count_messages(messages, counter)
        rel = {t.doc.id for t in turns}
        distractors = [d for d in docs if d.id not in rel]
        if n_tokens <= opts.target_tokens or not distractors:
            break
        docs = [d for d in docs if d.id != rng.choice(distractors).id]
    if not low <= n_tokens <= opts.target_tokens:
        return None, "length outside target band"
    if _render_args(opts) != _render_args(opts, fitting=True):  # same layout, this style's answers
        messages = ms.render(docs, turns, lang, **_render_args(opts))
        n_tokens = count_messages(messages, counter)
    return _sample(ctx, i, docs, turns, messages, n_tokens, lang), None


def _sample(ctx, i, docs, turns, messages, n_tokens, lang):  # noqa: ANN001, ANN202
    counter, opts = ctx.counter, ctx.opts
    depth = ms.depths(docs)
    index = {d.id: k + 1 for k, d in enumerate(docs)}
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = ms.doc_spans(docs, messages, lang)
    relevant = []
    for t, ans in zip(turns, answers, strict=False):
        relevant.append(
            {
                "doc_id": t.doc.id,
                "negative": t.negative,
                "doc_index": None if t.negative else index[t.doc.id],
                "depth": None if t.negative else depth[t.doc.id],
                "target_depth": None if t.target_depth is None else round(t.target_depth, 4),
                "quote_match": t.match or None,
                "quote_ratio": t.ratio,
                "attempts": t.attempts,
                "quote": t.quote if t.quote and not t.negative and t.quote in ans else None,
                "doc_span": None if t.negative else spans[t.doc.id],
                "quote_tokens": (
                    counter.count(t.quote) if t.quote and not t.negative and t.quote in ans else 0
                ),
                "answer_tokens": counter.count(ans),
                "answer": t.answer or None,
                "choices": t.choices or None,
                "source_quote": None if t.negative else (t.quote or None),
            }
        )
    meta = {
        "generator": opts.generator,
        "relevant": relevant,
        "num_docs": len(docs),
        "num_tokens": n_tokens,
        "target_tokens": opts.target_tokens,
        "tokenizer": counter.name,
        "seed": opts.seed,
        "answer_style": opts.answer_style,
        "neutral_questions": opts.neutral_questions,
    }
    return {"id": sample_id(i), "task": TASK, "lang": lang, "messages": messages, "meta": meta}


def build(options: Options) -> dict[str, Any]:
    """Build (or resume) the dataset described by ``options``; returns the stats dict."""
    from data_builders.mdqa_run import run_build

    return run_build(
        options, task=TASK, sample_id=sample_id, new_context=SampleContext, make_sample=make_sample
    )
