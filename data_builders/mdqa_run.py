"""Driver of the paraphrase-mdqa build: resume, concurrent sample workers, progress, stats.json.

Called by :func:`data_builders.paraphrase_mdqa.build`, which hands in its sample maker, so imports
go one way (``paraphrase_mdqa`` → ``mdqa_run``). Samples are numbered 0, 1, 2, ... and built
deterministically from (seed, number). ``num_samples`` is a target: ids are drawn in order until that
many samples are written, at most ``max_draws`` ids (default 2·N + 8), and a shortfall is reported
(``stats["shortfall"]``, with the draws spent). A new id starts only while the written samples plus
those in flight are below the target, so the output holds exactly the first N accepted ids whatever
the concurrency. A Ctrl-C stops the workers from starting new ids, discards the LLM requests in
flight (their answers, once received, are cached) and writes the samples already built. A rerun skips the ids already in the output or recorded as dropped in
``.build_state.json`` and rebuilds only the rest (LLM answers from the cache).
Statistics are recomputed from the output files and the dropped records at the end of every run,
so they are exact after any number of interrupted runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from data_builders.corpus import read_corpus
from data_builders.writer import ShardWriter, depth_histogram, length_histogram, write_stats
from longqa.core.errors import LongqaError
from longqa.core.interrupt import Interrupted, stop_requested
from longqa.data.llm import run_sync
from longqa.data.tokens import get_token_counter

# options that do not change what a sample contains (may differ between a run and its resume)
_RUNTIME = {
    "out", "num_samples", "base_url", "concurrency", "timeout", "max_retries", "cache",
    "price_input", "price_output", "shard_size", "progress", "max_draws", "response_format",
}  # fmt: skip


def fingerprint(opts: Any) -> str:
    content = {k: v for k, v in opts.model_dump().items() if k not in _RUNTIME}
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def make_client(opts: Any, out: Path) -> Any:
    """The OpenAI-compatible client of the ``llm`` generator (None for ``extractive``)."""
    if opts.generator != "llm":
        return None
    from longqa.data.llm import LLMClient

    if not opts.base_url and not opts.model:
        raise LongqaError(
            "the llm generator needs --base-url and --model (or use --generator extractive)"
        )
    return LLMClient(
        base_url=opts.base_url,
        model=opts.model or "",
        concurrency=opts.concurrency,
        timeout=opts.timeout,
        max_retries=opts.max_retries,
        cache_path=opts.cache or out / "llm_cache.sqlite",
        price_input_per_1m=opts.price_input,
        price_output_per_1m=opts.price_output,
        response_format=opts.response_format,
    )


MakeSample = Callable[[Any, int], Awaitable[tuple[dict[str, Any] | None, dict[str, Any]]]]


def run_build(
    opts: Any,
    *,
    task: str,
    sample_id: Callable[[int], str],
    new_context: Callable[[Any, Any, Any, Any], Any],
    make_sample: MakeSample,
) -> dict[str, Any]:
    """Build or resume ``opts.num_samples`` samples. ``new_context(opts, corpus, counter, client)``
    makes what the samples share; ``make_sample(ctx, i)`` returns ``(sample or None, info)``."""
    out = Path(opts.out)
    counter = get_token_counter(opts.tokenizer)
    corpus = read_corpus(
        opts.corpus,
        field=opts.field,
        max_doc_tokens=opts.max_doc_tokens,
        min_chars=opts.min_doc_chars,
        counter=counter,
        strict=opts.strict,
    )
    if len(corpus.docs) < 2:
        raise LongqaError(
            f"{opts.corpus}: {len(corpus.docs)} usable documents after cleaning; need at least 2"
        )
    client = make_client(opts, out)
    ctx = new_context(opts, corpus, counter, client)
    with ShardWriter(out, shard_size=opts.shard_size, prefix="data") as writer:
        fp = fingerprint(opts)
        if len(writer) and writer.state.get("fingerprint") not in (None, fp):
            raise LongqaError(
                f"{out}: holds samples built with different options; use a new --out "
                "(only --num-samples and runtime flags may change on resume)"
            )
        writer.state["fingerprint"] = fp
        dropped = writer.state.setdefault("dropped", {})
        writer.save_state()
        done = writer.done_ids()
        limit = max_draws(opts)
        todo = [i for i in range(limit) if sample_id(i) not in done | dropped.keys()]
        run_sync(
            _drive(ctx, writer, todo, sample_id, make_sample, target=opts.num_samples - len(done))
        )
    stats = collect_stats(out, opts, writer.state.get("dropped", {}), opts.num_samples, task)
    drawn = len(writer.done_ids() | writer.state.get("dropped", {}).keys())
    stats["draws"] = {"used": drawn, "limit": limit}
    if stats["shortfall"]:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] {stats['samples']} of {opts.num_samples} samples after "
            f"{drawn} draws (limit {limit}; raise --opt max_draws=N or see drop_reasons in "
            f"{out / 'stats.json'})"
        )
    stats["corpus"] = {**corpus.stats, "problems": corpus.problems[:10]}
    stats["llm"] = client.usage.as_dict() if client is not None else None
    write_stats(out, stats)
    return stats


def max_draws(opts: Any) -> int:
    """How many sample ids a build may try to reach ``num_samples``."""
    return max(opts.max_draws or 2 * opts.num_samples + 8, opts.num_samples)


async def _drive(
    ctx: Any,
    writer: ShardWriter,
    todo: list[int],
    sample_id: Callable[[int], str],
    make_sample: MakeSample,
    target: int,
) -> None:
    """Build ids of ``todo`` in order until ``target`` more samples are written or ``todo`` ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    opts = ctx.opts
    pending = iter(todo)
    n_workers = 1 if opts.generator == "extractive" else max(2, 2 * opts.concurrency // opts.turns)
    counts = Counter()
    progress = Progress(
        TextColumn("[bold]paraphrase-mdqa"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("accepted {task.fields[ok]} · dropped {task.fields[bad]}"),
        disable=not opts.progress,
    )
    task = progress.add_task("build", total=max(target, 0), ok=0, bad=0, rate="")

    slot_freed = asyncio.Condition()

    def may_start() -> bool:
        free = counts["ok"] + counts["in_flight"] < target or not counts["in_flight"]
        return free or stop_requested()

    async def worker() -> None:
        while True:
            async with slot_freed:  # start an id only while every one in flight may be accepted
                await slot_freed.wait_for(may_start)
                if counts["ok"] >= target or stop_requested():  # Ctrl-C: start no more ids
                    slot_freed.notify_all()
                    return
                i = next(pending, None)
                if i is None:
                    return
                counts["in_flight"] += 1
            try:
                sample, info = await make_sample(ctx, i)
            except BaseException:
                counts["in_flight"] -= 1
                raise
            async with slot_freed:  # record before waking the others: no overshoot
                counts["in_flight"] -= 1
                if sample is not None:
                    try:
                        writer.write(sample)
                    except Interrupted:  # written; run_sync raises once every worker returned
                        counts["ok"] += 1
                        slot_freed.notify_all()
                        return
                    counts["ok"] += 1
                else:
                    writer.state["dropped"][sample_id(i)] = info
                    writer.save_state()
                    counts["bad"] += 1
                slot_freed.notify_all()
            elapsed = progress.tasks[0].elapsed or 1e-9
            rate = f"{counts['ok'] / elapsed:.2f} samples/s"
            progress.update(
                task, completed=counts["ok"], ok=counts["ok"], bad=counts["bad"], rate=rate
            )

    with progress:
        try:
            await asyncio.gather(*(worker() for _ in range(n_workers)))
        finally:
            if ctx.client is not None:
                await ctx.client.aclose()


def collect_stats(
    out: Path, opts: Any, dropped: dict[str, Any], requested: int, task: str
) -> dict[str, Any]:
    """Stats over every sample in ``out`` plus the dropped records (see module docstring)."""
    lengths, depth_values = [], []
    rejections, dropped_turns, matches = Counter(), Counter(), Counter()
    turns = negatives = quote_tokens = answer_tokens = 0
    n = 0
    for s in ShardWriter(out, prefix="data").iter_samples():
        meta = s["meta"]
        n += 1
        lengths.append(meta["num_tokens"])
        rejections.update(meta.get("rejections", {}))
        dropped_turns.update(meta.get("dropped_turns", {}))
        for r in meta["relevant"]:
            turns += 1
            negatives += r["negative"]
            quote_tokens += r["quote_tokens"]
            answer_tokens += r["answer_tokens"]
            if r["depth"] is not None:
                depth_values.append(r["depth"])
            if r["quote_match"] and not r["negative"]:
                matches[r["quote_match"]] += 1
    drop_reasons = Counter()
    for info in dropped.values():
        drop_reasons[info["reason"]] += 1
        rejections.update(info.get("rejections", {}))
        dropped_turns.update(info.get("dropped_turns", {}))
    low = int(opts.target_tokens * (1 - opts.length_tolerance))
    return {
        "task": task,
        "generator": opts.generator,
        "requested": requested,
        "samples": n,
        "shortfall": max(0, requested - n),
        "dropped_samples": sum(drop_reasons.values()),
        "drop_reasons": dict(drop_reasons),
        "turns": turns,
        "negative_turns": negatives,
        "dropped_turns": dict(dropped_turns),
        "rejections": dict(rejections),
        "quote_match": dict(matches),
        "effective_token_share": round(quote_tokens / answer_tokens, 4) if answer_tokens else 0.0,
        "assistant_tokens": answer_tokens,
        "quote_tokens": quote_tokens,
        "tokens": {
            "tokenizer": opts.tokenizer,
            "band": [low, opts.target_tokens],
            "total": sum(lengths),
            "mean": round(sum(lengths) / n, 1) if n else 0,
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
        },
        "length_histogram": length_histogram(lengths, lo=low, hi=opts.target_tokens),
        "depth_histogram": depth_histogram(depth_values),
        "options": opts.model_dump(),
    }
