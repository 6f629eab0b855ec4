"""`longqa build-data --task TASK ...`: run one dataset builder of ``data_builders.registry``.

Every flag the user sets is gathered into a dict and validated against the chosen builder's
``Options`` model (pydantic, ``extra="forbid"``), so a flag another task does not know fails with a
one-line "``--turns`` is not an option of task book-summary" error. Options without a dedicated flag
are passed as ``--opt key=value`` (repeatable; values parsed as YAML scalars/lists). Adding a
builder needs no change here unless it wants a dedicated flag: add one parameter below (default
``None``) and it is forwarded automatically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from longqa.core.errors import LongqaError


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LongqaError(f"--opt '{pair}': expected key=value")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key.strip().replace("-", "_")] = value
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_options(task: str, values: dict[str, Any]) -> Any:
    """The builder's ``Options`` for ``values``; bad/unknown/missing flags become one-line errors."""
    from pydantic import ValidationError

    from data_builders.registry import get_builder_module

    module = get_builder_module(task)
    try:
        return module.Options.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        name = str(err["loc"][0]) if err["loc"] else "<options>"
        if err["type"] == "extra_forbidden":
            known = ", ".join(_flag(f) for f in module.Options.model_fields)
            raise LongqaError(
                f"`{_flag(name)}` is not an option of task {task} (its options: {known})"
            ) from None
        if err["type"] == "missing":
            raise LongqaError(f"`{_flag(name)}` is required for task {task}") from None
        got = err.get("input")
        raise LongqaError(f"`{_flag(name)}`: {err['msg']} (got {got!r})") from None


def run_builder(task: str, values: dict[str, Any]) -> dict[str, Any]:
    """Validate ``values`` for ``task`` and run its builder (what the CLI does; notebooks too)."""
    from data_builders.registry import get_builder

    options = validate_options(task, values)
    return get_builder(task)(options)


def build_data(
    task: str = typer.Option(..., "--task", help="builder: paraphrase-mdqa, book-summary, ..."),
    describe: bool = typer.Option(
        False, "--describe", help="print the task's behaviour and all its options, then exit"
    ),
    out: Path = typer.Option(None, "--out", help="output folder (JSONL shards + stats.json)"),
    corpus: Path = typer.Option(None, "--corpus", help="input corpus (file or folder)"),
    input: Path = typer.Option(None, "--input", help="input file/folder (builders that use it)"),
    inputs: list[str] = typer.Option(None, "--inputs", help="mix: input datasets (repeatable)"),
    generator: str = typer.Option(None, "--generator", help="llm | extractive"),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint"),
    model: str = typer.Option(None, "--model", help="served model name (key: $OPENAI_API_KEY)"),
    concurrency: int = typer.Option(None, "--concurrency", help="parallel LLM requests"),
    response_format: str = typer.Option(
        None, "--response-format", help="auto | json_schema | json_object | none"
    ),
    cache: Path = typer.Option(None, "--cache", help="SQLite LLM response cache"),
    num_samples: int = typer.Option(None, "--num-samples", help="samples to deliver (a target)"),
    max_samples: int = typer.Option(None, "--max-samples", help="cap on samples"),
    target_tokens: int = typer.Option(None, "--target-tokens", help="sample length in tokens"),
    tokenizer: str = typer.Option(None, "--tokenizer", help="alias/path/hub id, or 'approx'"),
    docs_per_group: int = typer.Option(None, "--docs-per-group", help="documents per sample"),
    max_doc_tokens: int = typer.Option(None, "--max-doc-tokens", help="split longer docs"),
    turns: int = typer.Option(None, "--turns", help="QA turns per sample"),
    negative_ratio: float = typer.Option(None, "--negative-ratio", help="share of negatives"),
    cite_index: bool = typer.Option(None, "--cite-index/--no-cite-index", help="name doc number"),
    answer_style: str = typer.Option(None, "--answer-style", help="paraphrase | plain (control)"),
    max_attempts: int = typer.Option(None, "--max-attempts", help="LLM tries per turn"),
    quote_threshold: float = typer.Option(None, "--quote-threshold", help="fuzzy quote ratio"),
    lang: str = typer.Option(None, "--lang", help="en | zh | auto"),
    field: str = typer.Option(None, "--field", help="text field of JSONL/Parquet input"),
    min_words: int = typer.Option(None, "--min-words", help="long-pretrain: min doc length"),
    separator: str = typer.Option(None, "--separator", help="long-pretrain: doc separator"),
    upsample: float = typer.Option(None, "--upsample", help="long-pretrain: copies of long docs"),
    counts: str = typer.Option(None, "--counts", help="mix: records per input, e.g. 20000,1000"),
    ratios: str = typer.Option(None, "--ratios", help="mix: share per input, e.g. 0.9,0.1"),
    total: int = typer.Option(None, "--total", help="mix: mixture size with --ratios"),
    seed: int = typer.Option(None, "--seed", help="random seed"),
    shard_size: int = typer.Option(None, "--shard-size", help="samples per output shard"),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="fail on a bad input line"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="show a progress bar"),
    opt: list[str] = typer.Option(None, "--opt", help="any other option: key=value (repeatable)"),
) -> None:
    """Build a training dataset: `longqa build-data --task paraphrase-mdqa --corpus DIR --out DIR`.

    Flags not known to the chosen task are errors; `--opt key=value` passes any option of the task.
    """
    params = dict(locals())
    from data_builders.registry import available_builders

    if task not in available_builders():
        raise LongqaError(f"unknown task '{task}'; available: {', '.join(available_builders())}")
    if describe:
        from data_builders.registry import describe_builder

        print(describe_builder(task))
        return
    skip = ("task", "opt", "describe")
    given = {k: v for k, v in params.items() if k not in skip and v not in (None, [])}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    extra = _parse_opts(opt or [])
    clash = sorted(set(extra) & set(given))
    if clash:
        raise LongqaError(f"`{_flag(clash[0])}` given both as a flag and as --opt")
    stats = run_builder(task, {**given, **extra})
    _report(task, stats, given.get("out") or extra.get("out"))


def _report(task: str, stats: dict[str, Any], out: Any) -> None:
    from rich.console import Console

    keys = (
        "samples",
        "requested",
        "shortfall",
        "dropped_samples",
        "turns",
        "effective_token_share",
    )
    shown = ", ".join(f"{k}={stats[k]}" for k in keys if k in stats)
    Console(stderr=True).print(f"[bold green]{task}[/] done → {out}: {shown}")
