"""`longqa eval …`: passkey, needle, passage-retrieval, perplexity, ruler, harness, compare.

Examples::

    longqa eval passkey --model smollm2-135m --rope dynamic-yarn --lengths 4096,12288 --trials 10
    longqa eval passkey --model smollm2-135m --rope yarn --rope-factor 2 --out runs/pk-yarn2
    longqa eval needle --model smollm2-135m --haystack ../shared/corpora/paul_graham_essays \\
        --lengths 1000,2000,4000 --depths 0,25,50,75,100 --out runs/needle
    longqa eval passage-retrieval --model M --adapter runs/x/adapter --data pr_en.jsonl --out runs/pr
    longqa eval perplexity --model M --rope yarn --rope-factor 2 --data docs/ --lengths 2048,8192,16384
    longqa eval perplexity --model M --data pg19/ --protocol yarn --min-tokens 16384 --samples 10
    longqa eval passkey --model Qwen/Qwen-14B-Chat --rope dynamic-ntk --rope-ntk-variant qwen --rope-logn
    longqa eval ruler --model smollm2-135m --rope dynamic-yarn --lengths 4096,8192 --tasks all \\
        --samples 5 --haystack ../shared/corpora/paul_graham_essays --out runs/ruler
    longqa eval harness --model M --adapter runs/a --tasks longqa_mdqa_choice --out runs/h  # lm-eval
    longqa eval compare runs/pk-none runs/pk-yarn2 runs/pk-adapter

Thin wrappers over ``longqa.eval``; every run writes ``results.jsonl`` + ``summary.json`` in
``--out`` and resumes there when rerun with the same settings. A new evaluation is one function:
``@app.command("name")`` + ``@rope_options`` (the whole RoPE flag group, received as ``rope``),
the shared ``ModelOpt``/``AdapterOpt``/``DtypeOpt``/``OutOpt`` parameters, then ``_load(...)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from longqa.cli.options import rope_options
from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError

app = typer.Typer(help="Evaluate long-context ability (results.jsonl + summary.json in --out).")

ModelOpt = Annotated[str, typer.Option(help="model alias, HF folder, .gguf or hub id")]
AdapterOpt = Annotated[
    str | None, typer.Option(help="LoRA adapter folder (its saved RoPE spec is applied)")
]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
OutOpt = Annotated[Path | None, typer.Option(help="output folder (default: runs/eval/…)")]
OverwriteOpt = Annotated[bool, typer.Option(help="discard earlier results in --out")]
BatchOpt = Annotated[int, typer.Option(help="prompts per batch (1 enables KV prefix reuse)")]


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LongqaError(f"{flag}: expected comma-separated integers (got '{text}')") from None
    if not values or any(v < 1 for v in values):
        raise LongqaError(f"{flag}: expected positive integers (got '{text}')")
    return values


def _depths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LongqaError(f"--depths: expected comma-separated percents (got '{text}')") from None
    if not values or any(not 0 <= v <= 100 for v in values):
        raise LongqaError(f"--depths: percents between 0 and 100 expected (got '{text}')")
    return [v / 100 for v in values]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "run"


def _load(model: str, adapter: str | None, rope: RopeConfig | None, dtype: str):
    """Model, tokenizer and the RoPE spec in effect (``rope``, else the adapter's, else none)."""
    from longqa.models.load import load

    return load(model, adapter=adapter, rope=rope, dtype=dtype)


def _out(out: Path | None, task: str, model: str, spec: Any) -> Path:
    """The run's output folder, locked for the command (one writer per folder)."""
    from longqa.core.folder_lock import hold_for_command
    from longqa.eval.runner import spec_label

    if out is None:
        out = Path("runs/eval") / _slug(f"{task}-{Path(model).name}-{spec_label(spec)}")
    return hold_for_command(out)


def _warn(mdl: Any, spec: Any, lengths: list[int]) -> None:
    import warnings

    from rich.console import Console

    from longqa.eval.runner import context_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = context_warnings(mdl, spec, lengths)
    for msg in msgs:
        Console(stderr=True).print(f"[bold yellow]warning:[/] {msg}")


def _console():
    from rich.console import Console

    return Console()


@app.command("passkey")
@rope_options
def passkey(
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    lengths: Annotated[str, typer.Option(help="context lengths in tokens")] = "4096,12288",
    trials: Annotated[int, typer.Option(help="trials per length")] = 10,
    depths: Annotated[str, typer.Option(help="key depths in percent")] = "0,25,50,75,100",
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 8,
    seed: Annotated[int, typer.Option(help="seed for the pass keys")] = 0,
    dtype: DtypeOpt = "float32",
    batch_size: BatchOpt = 1,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Passkey retrieval: a number hidden in filler text at several depths and lengths."""
    from longqa.eval.passkey import run_passkey

    lens = _ints(lengths, "--lengths")
    mdl, tok, spec = _load(model, adapter, rope, dtype)
    _warn(mdl, spec, lens)
    summary = run_passkey(
        mdl, tok, spec, lengths=lens, trials=trials, depths=tuple(_depths(depths)),
        out_dir=_out(out, "passkey", model, spec), max_new_tokens=max_new_tokens, seed=seed,
        batch_size=batch_size, model_name=model, overwrite=overwrite,
    )  # fmt: skip
    _print_grid(summary["table"], "length", "depth", f"passkey accuracy [{summary['rope']}]")
    for length, acc in summary["by_length"].items():
        typer.echo(f"length {length}: accuracy {acc:.2f}")
    typer.echo(f"overall accuracy {summary['accuracy']:.2f} → {summary['out_dir']}")


def _print_grid(table: dict[str, dict[str, float]], row_name: str, col_name: str, title: str):
    from rich.table import Table

    cols = sorted({c for r in table.values() for c in r}, key=float)
    from rich.markup import escape

    t = Table(title=escape(title))
    t.add_column(f"{row_name} \\ {col_name}")
    for c in cols:
        t.add_column(c, justify="right")
    for r, vals in table.items():
        t.add_row(r, *(f"{vals[c]:.2f}" if c in vals else "—" for c in cols))
    _console().print(t)


def _make_judge(judge_model: str | None, judge_url: str | None):
    if not judge_model:
        return None
    from longqa.eval.needle import make_judge

    return make_judge(judge_model, base_url=judge_url)


@app.command("needle")
@rope_options
def needle(
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    haystack: Annotated[
        Path | None, typer.Option(help="folder of .txt/.md files (default: shared essays)")
    ] = None,
    lengths: Annotated[str, typer.Option(help="context lengths in tokens")] = "1000,2000,4000",
    depths: Annotated[str, typer.Option(help="needle depths in percent")] = "0,25,50,75,100",
    needle_text: Annotated[str | None, typer.Option("--needle", help="the needle sentence")] = None,
    question: Annotated[str | None, typer.Option(help="question asked at the end")] = None,
    answer: Annotated[str | None, typer.Option(help="expected answer (containment)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 48,
    judge_model: Annotated[
        str | None, typer.Option(help="score with an OpenAI-compatible judge model")
    ] = None,
    judge_url: Annotated[str | None, typer.Option(help="judge endpoint base URL")] = None,
    dtype: DtypeOpt = "float32",
    batch_size: BatchOpt = 1,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Needle in a haystack over lengths × depths; writes heatmap.png + heatmap.json."""
    from longqa.eval import needle as nd

    if (needle_text is None) != (answer is None) or (needle_text is None) != (question is None):
        raise LongqaError("--needle, --question and --answer go together (set all three or none)")
    lens, deps = _ints(lengths, "--lengths"), _depths(depths)
    if haystack is not None:
        nd.load_haystack(haystack)  # fail on an empty folder before loading the model
    judge = _make_judge(judge_model, judge_url)
    mdl, tok, spec = _load(model, adapter, rope, dtype)
    _warn(mdl, spec, lens)
    out_dir = _out(out, "needle", model, spec)
    summary = nd.run_needle(
        mdl, tok, spec, haystack=haystack, lengths=lens, depths=deps, out_dir=out_dir,
        needle=needle_text or nd.NEEDLE, question=question or nd.QUESTION,
        answer=answer or nd.ANSWER, max_new_tokens=max_new_tokens, batch_size=batch_size,
        judge=judge, model_name=model, overwrite=overwrite,
    )  # fmt: skip
    table = {
        f"{d * 100:g}%": {str(L): v for L, v in zip(lens, row, strict=True) if v is not None}
        for d, row in zip(deps, summary["grid"], strict=True)
    }
    _print_grid(table, "depth", "length", f"needle score [{summary['rope']}]")
    typer.echo(f"accuracy {summary['accuracy']:.2f} → {out_dir / 'heatmap.png'}")


@app.command("passage-retrieval")
@rope_options
def passage_retrieval(
    data: Annotated[Path, typer.Option(help="LongBench JSONL (passage_retrieval_en/zh format)")],
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    lang: Annotated[str | None, typer.Option(help="en or zh (default: from the data)")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="prompt token budget (middle truncation beyond it)")
    ] = None,
    budget: Annotated[
        str, typer.Option(help="without --max-length: window or longbench")
    ] = "window",
    limit: Annotated[int | None, typer.Option(help="only the first N samples")] = None,
    dtype: DtypeOpt = "float32",
    batch_size: BatchOpt = 1,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """LongBench passage retrieval with its prompts and scorer (score ×100 and accuracy)."""
    from longqa.eval.passage_retrieval import read_longbench, run_passage_retrieval

    if budget not in ("window", "longbench"):
        raise LongqaError(f"--budget must be window or longbench (got '{budget}')")
    rows = read_longbench(data)  # validate before loading the model
    mdl, tok, spec = _load(model, adapter, rope, dtype)
    if max_length:
        _warn(mdl, spec, [max_length])
    summary = run_passage_retrieval(
        mdl, tok, spec, data=data, out_dir=_out(out, "passage-retrieval", model, spec), lang=lang,
        max_length=max_length, budget=budget, limit=limit, batch_size=batch_size, model_name=model,
        overwrite=overwrite,
    )  # fmt: skip
    typer.echo(
        f"{summary['dataset']}: score {summary['score']:.2f} (×100), accuracy "
        f"{summary['accuracy']:.2f} over {summary['n']} of {len(rows)} samples "
        f"(prompt budget {summary['max_length']} tokens, rule {summary['budget']})"
    )


@app.command("perplexity")
@rope_options
def perplexity(
    data: Annotated[Path, typer.Option(help="text file, folder of .txt/.md, or JSONL with 'text'")],
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    lengths: Annotated[str, typer.Option(help="context lengths in tokens")] = "2048,4096,8192",
    stride: Annotated[
        int | None, typer.Option(help="window stride (default: length / 2; yarn: 256)")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="stream: tokens of text to score (default: 2 × max length)")
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="stream (token-weighted) or yarn (YaRN's)")
    ] = "stream",
    min_tokens: Annotated[
        int | None, typer.Option(help="yarn: drop documents shorter than this (tokens)")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="yarn: first N documents kept")] = None,
    truncate: Annotated[
        bool, typer.Option(help="yarn: score only each document's first window")
    ] = False,
    dtype: DtypeOpt = "float32",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Perplexity vs context length (sliding window); writes perplexity_by_length.png."""
    from longqa.eval.perplexity import load_documents, run_perplexity

    lens = _ints(lengths, "--lengths")
    if protocol not in ("stream", "yarn"):
        raise LongqaError(f"--protocol must be stream or yarn (got '{protocol}')")
    yarn_only = {"--min-tokens": min_tokens, "--samples": samples, "--truncate": truncate or None}
    misplaced = [flag for flag, value in yarn_only.items() if value is not None]
    if protocol != "yarn" and misplaced:
        raise LongqaError(f"{misplaced[0]} needs --protocol yarn")
    if stride is not None and (stride < 1 or stride > min(lens)):
        raise LongqaError(f"--stride must be between 1 and the smallest length {min(lens)}")
    load_documents(data)
    mdl, tok, spec = _load(model, adapter, rope, dtype)
    _warn(mdl, spec, lens)
    out_dir = _out(out, "perplexity", model, spec)
    summary = run_perplexity(
        mdl, tok, spec, data=data, lengths=lens, out_dir=out_dir, stride=stride,
        max_tokens=max_tokens, protocol=protocol, min_tokens=min_tokens, samples=samples,
        truncate=truncate, model_name=model, overwrite=overwrite,
    )  # fmt: skip
    for length, ppl in summary["by_length"].items():
        typer.echo(f"length {length}: perplexity {ppl:.3f}")
    typer.echo(f"protocol {summary['protocol']} → {out_dir / 'perplexity_by_length.png'}")


@app.command("ruler")
@rope_options
def ruler(
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    lengths: Annotated[str, typer.Option(help="context lengths in tokens")] = "4096,8192",
    tasks: Annotated[
        str, typer.Option(help="all, a family (niah, qa) or comma-separated RULER task names")
    ] = "all",
    samples: Annotated[int, typer.Option(help="samples per task and length")] = 5,
    seed: Annotated[int, typer.Option(help="seed for keys, values and positions")] = 0,
    haystack: Annotated[
        Path | None, typer.Option(help="essay haystack folder of .txt/.md (default: shared essays)")
    ] = None,
    qa_squad: Annotated[Path | None, typer.Option(help="SQuAD-format JSON for qa_1")] = None,
    qa_hotpot: Annotated[Path | None, typer.Option(help="HotpotQA-format JSON for qa_2")] = None,
    threshold: Annotated[
        float, typer.Option(help="effective-context threshold (average score, 0-100)")
    ] = 85.6,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="cap on RULER's tokens to generate per task")
    ] = None,
    dtype: DtypeOpt = "float32",
    batch_size: BatchOpt = 1,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """RULER synthetic tasks (niah ×8, vt, cwe, fwe, qa ×2): task × length table, effective context."""
    from longqa.core.paths import shared_essays
    from longqa.eval.ruler import resolve_tasks, run_ruler

    lens, names = _ints(lengths, "--lengths"), resolve_tasks(tasks)
    if samples < 1:
        raise LongqaError("--samples must be >= 1")
    for path in (haystack, qa_squad, qa_hotpot):
        if path is not None and not path.exists():
            raise LongqaError(f"not found: {path}")
    hay = haystack or shared_essays()
    if haystack is not None:
        from longqa.eval.ruler.haystack import load_essay_words

        load_essay_words(haystack)  # fail on an empty folder before loading the model
    mdl, tok, spec = _load(model, adapter, rope, dtype)
    _warn(mdl, spec, lens)
    summary = run_ruler(
        mdl, tok, spec, lengths=lens, tasks=names, samples=samples, seed=seed, haystack=hay,
        qa_files={"squad": qa_squad, "hotpotqa": qa_hotpot}, threshold=threshold,
        max_new_tokens=max_new_tokens, out_dir=_out(out, "ruler", model, spec),
        batch_size=batch_size, model_name=model, overwrite=overwrite,
        notify=lambda m: typer.echo(f"notice: {m}", err=True),
    )  # fmt: skip
    table = {t: dict(v) for t, v in summary["table"].items()}
    table["average"] = dict(summary["by_length"])
    _print_grid(table, "task", "length", f"RULER score ×100 [{summary['rope']}]")
    eff = summary["effective_context"]
    typer.echo(
        f"average {summary['score']:.2f}; effective context "
        f"{eff if eff else 'below the shortest length'} (threshold {summary['threshold']:g})"
        f" → {summary['out_dir']}"
    )


@app.command("harness")
@rope_options
def harness(
    tasks: Annotated[str, typer.Option(help="lm-eval task or group names, comma-separated")],
    model: ModelOpt = "smollm2-135m",
    adapter: AdapterOpt = None,
    rope: RopeConfig | None = None,
    include_path: Annotated[
        list[Path] | None, typer.Option(help="folder of lm-eval task YAMLs (repeatable)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N samples per task")] = None,
    batch_size: BatchOpt = 1,
    max_length: Annotated[
        int | None, typer.Option(help="lm-eval's context budget (default: the model's window)")
    ] = None,
    quantization: Annotated[
        str, typer.Option(help="auto (the adapter's training setting), none or nf4")
    ] = "auto",
    dtype: DtypeOpt = "float32",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """lm-evaluation-harness tasks on the model as longqa loads it (RoPE patch, dynamic methods
    included), offline; lm-eval's results JSON + summary.json in --out (extra: longqa[harness])."""
    from longqa.eval.harness import prepare_tasks, run_harness, trained_quantization
    from longqa.models.load import load

    names, paths = [t.strip() for t in tasks.split(",") if t.strip()], include_path or []
    task_manager = prepare_tasks(names, paths)  # before loading the model
    quantization = trained_quantization(adapter, quantization)
    mdl, tok, spec = load(model, adapter=adapter, rope=rope, dtype=dtype, quantization=quantization)
    if max_length:
        _warn(mdl, spec, [max_length])
    summary = run_harness(
        mdl, tok, spec, tasks=names, include_path=paths, task_manager=task_manager,
        out_dir=_out(out, "harness", model, spec), limit=limit, batch_size=batch_size,
        max_length=max_length, model_name=model, overwrite=overwrite,
        run_info={"adapter": str(adapter or ""), "dtype": dtype, "quantization": quantization},
        notify=lambda m: typer.echo(m, err=True),
    )  # fmt: skip
    for task, r in summary["tasks"].items():
        typer.echo(f"{task}: {r['metric']} {r['value']:.4f} ± {r['stderr'] or 0:.4f} (n={r['n']})")
    typer.echo(f"rope {summary['rope']}, window {summary['window']} → {summary['out_dir']}")


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more --out folders")],
) -> None:
    """Side-by-side table of runs' summaries (headline, by length, by depth), Δ vs the first."""
    from rich.markup import escape
    from rich.table import Table

    from longqa.eval.compare import compare_runs, format_value

    if len(runs) < 2:
        raise LongqaError("eval compare needs at least two run folders")
    first, others = runs[0], runs[1:]
    pairs = [compare_runs(first, other) for other in others]
    tasks = [pairs[0][0]["tasks"][0], *(info["tasks"][1] for info, _ in pairs)]
    ropes = [pairs[0][0]["ropes"][0], *(info["ropes"][1] for info, _ in pairs)]
    if len(set(tasks)) > 1:
        typer.echo(f"note: comparing different tasks {' vs '.join(map(str, tasks))}")
    names = list(dict.fromkeys(name for _, rows in pairs for name, *_ in rows))
    by_pair = [{name: (a, b, d) for name, a, b, d in rows} for _, rows in pairs]
    t = Table(title=escape(f"{tasks[0]}: {' vs '.join(map(str, runs))}"))
    t.add_column("metric")
    for run, rope in zip(runs, ropes, strict=True):
        t.add_column(escape(f"{run}\n{rope}"), justify="right")
    for run in others:
        t.add_column(escape(f"Δ {run.name}" if len(others) > 1 else "Δ"), justify="right")
    for name in names:
        base = next((p[name][0] for p in by_pair if name in p), None)
        values = [p.get(name, (None, None, None))[1] for p in by_pair]
        deltas = [p.get(name, (None, None, None))[2] for p in by_pair]
        cells = [format_value(v) for v in (base, *values)]
        t.add_row(name, *cells, *("" if d is None else f"{d:+.4g}" for d in deltas))
    _console().print(t)
