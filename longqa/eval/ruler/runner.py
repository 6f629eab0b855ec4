"""Run RULER tasks on a model: build prompts, generate greedily, score, summarise (resumable).

Usage::

    from longqa.eval.ruler import run_ruler
    summary = run_ruler(model, tok, spec, lengths=[4096, 8192], tasks=["niah_single_1", "vt"],
                        samples=5, haystack="../shared/corpora/paul_graham_essays", out_dir="runs/r")
    summary["table"]["vt"]["4096"], summary["effective_context"]

Samples are seeded by ``(seed, task, length, index)``. ``results.jsonl`` holds one row per
sample (output, expected strings, score 0–100); ``summary.json`` holds the task × length
``table``, ``by_task``, ``by_length`` (average over tasks), ``score`` (average over all cells) and
``effective_context``. Tasks that need data not given (essay haystack, QA files) are skipped with
a notice in ``skipped``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.eval.ruler.prompt import fit_sample
from longqa.eval.ruler.scoring import DEFAULT_THRESHOLD, effective_context, sample_score
from longqa.eval.ruler.tasks import TASKS, GenContext, resolve_tasks


def gen_context(
    haystack: str | Path | None, qa_files: dict[str, str | Path] | None, words_needed: int = 2000
) -> GenContext:
    """Word pool + essay words from the ``haystack`` folder (None: no essay tasks) + QA data."""
    from longqa.eval.ruler.haystack import load_essay_words
    from longqa.eval.ruler.qa import read_qa
    from longqa.eval.ruler.words import word_pool

    folder = str(haystack) if haystack else None
    qa = {name: read_qa(name, path) for name, path in (qa_files or {}).items() if path}
    return GenContext(
        words=word_pool(folder, words_needed),
        word_source=folder,
        essay_words=load_essay_words(folder) if folder else None,
        qa_data=qa,
    )


def _missing(task: str, ctx: GenContext) -> str | None:
    spec = TASKS[task]
    if spec.knobs.get("type_haystack") == "essay" and not ctx.essay_words:
        return "no essay haystack (give --haystack FOLDER)"
    if spec.family == "qa" and spec.knobs["dataset"] not in ctx.qa_data:
        flag = "--qa-squad" if spec.knobs["dataset"] == "squad" else "--qa-hotpot"
        return f"no {spec.knobs['dataset']} file (give {flag} FILE)"
    return None


def make_items(
    tokenizer: Any,
    tasks: list[str],
    lengths: list[int],
    samples: int,
    ctx: GenContext,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``(items, skipped)``: one item per (task, length, sample) that can be built."""
    from dataclasses import replace

    if samples < 1:
        raise LongqaError("--samples must be >= 1")
    items, skipped = [], {}
    for task in tasks:
        why = _missing(task, ctx)
        if why:
            skipped[task] = why
            continue
        spec = TASKS[task]
        for length in lengths:
            lctx = replace(ctx, length=length)
            if spec.family == "common_words" and len(ctx.words) < length // 4:
                from longqa.eval.ruler.words import word_pool

                lctx = replace(lctx, words=word_pool(ctx.word_source, length // 4))
            for i in range(samples):
                sample, ids, n = fit_sample(
                    tokenizer, spec, length, f"{seed}-{task}-{length}-{i}", lctx
                )
                items.append(
                    {
                        "key": f"{task}-L{length}-s{i}",
                        "task": task,
                        "length": length,
                        "sample": i,
                        "haystack_units": n,
                        "outputs": sample.outputs,
                        "metric": spec.metric,
                        "ids": ids,
                    }
                )
    return items, skipped


def summarize(
    rows: list[dict[str, Any]],
    tasks: list[str],
    lengths: list[int],
    threshold: float = DEFAULT_THRESHOLD,
    **extra: Any,
) -> dict[str, Any]:
    """Task × length table of mean scores, per-task and per-length averages, effective context."""
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["task"], r["length"])].append(float(r["score"]))

    def mean(xs: list[float]) -> float:
        return round(sum(xs) / len(xs), 2) if xs else 0.0

    run_tasks = [t for t in tasks if any((t, L) in cells for L in lengths)]
    table = {
        t: {str(L): mean(cells[(t, L)]) for L in lengths if (t, L) in cells} for t in run_tasks
    }
    by_task = {t: mean(list(v.values())) for t, v in table.items()}
    by_length = {
        str(L): mean([table[t][str(L)] for t in run_tasks if str(L) in table[t]])
        for L in lengths
        if any(str(L) in table[t] for t in run_tasks)
    }
    return {
        "task": "ruler",
        "metric": "score",
        "score": mean(list(by_length.values())),
        "n": len(rows),
        "tasks": run_tasks,
        "lengths": lengths,
        "table": table,
        "by_task": by_task,
        "by_length": by_length,
        "threshold": threshold,
        "effective_context": effective_context(by_length, threshold),
        **extra,
    }


def score_row(item: dict[str, Any], text: str) -> dict[str, Any]:
    return {"score": sample_score(text, item["outputs"], item["metric"])}


def run_ruler(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    lengths: list[int],
    tasks: list[str] | str = "all",
    samples: int = 5,
    seed: int = 0,
    haystack: str | Path | None = None,
    qa_files: dict[str, str | Path] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    max_new_tokens: int | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 1,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
    notify: Any = None,
) -> dict[str, Any]:
    """Run (or resume) the RULER grid and return the summary (also in ``out_dir``).

    ``max_new_tokens`` caps each task's RULER tokens-to-generate (the budget keeps the full
    count); ``notify(msg)`` receives skip notices (default: ignored).
    """
    from longqa.eval.runner import run_generation_eval, spec_label

    names = resolve_tasks(tasks)
    ctx = gen_context(haystack, qa_files)
    items, skipped = make_items(tokenizer, names, lengths, samples, ctx, seed)
    for task, why in skipped.items():
        if notify:
            notify(f"{task} skipped: {why}")
    config = {
        "lengths": lengths,
        "tasks": names,
        "samples": samples,
        "seed": seed,
        "haystack": str(haystack) if haystack else None,
        "qa_files": {k: str(v) for k, v in (qa_files or {}).items() if v},
        "max_new_tokens": max_new_tokens,
    }

    def budget(item: dict[str, Any]) -> int:
        want = TASKS[item["task"]].tokens_to_generate
        return min(want, max_new_tokens) if max_new_tokens else want

    order = {name: i for i, name in enumerate(names)}  # one task after the other, as listed
    summary, _ = run_generation_eval(
        model, tokenizer, spec, task="ruler", config=config,
        items=sorted(items, key=lambda it: order[it["task"]]), score=score_row,
        summarize=lambda rows, out: summarize(
            rows, names, lengths, threshold, model=model_name, rope=spec_label(spec),
            skipped=skipped, out_dir=str(out),
        ),
        max_new_tokens=budget, out_dir=out_dir, label=lambda it: f"ruler {it['task']}",
        model_name=model_name, batch_size=batch_size, overwrite=overwrite,
        show_progress=show_progress,
    )  # fmt: skip
    return summary
