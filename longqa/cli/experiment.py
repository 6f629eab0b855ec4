"""`longqa experiment`: run a shipped experiment end to end (resumable), or print its plan.

Examples::

    longqa experiment run experiments/paraphrase-ablation.yaml --out runs/exp
    longqa experiment run experiments/paraphrase-ablation.yaml --out runs/exp --resume
    longqa experiment run paraphrase-ablation --profile gpu --dry-run
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="Reproducible experiments (e.g. the paraphrase ablation).", no_args_is_help=True
)


@app.command("run")
def run(
    experiment: str = typer.Argument(..., help="experiment YAML, or a name under experiments/"),
    out: Path = typer.Option(Path("runs/experiment"), "--out", help="output folder"),
    profile: str = typer.Option("cpu", "--profile", help="sizes: cpu | gpu (see the file)"),
    resume: bool = typer.Option(False, "--resume", help="continue a run in --out"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and estimate, then exit"),
    base_url: str | None = typer.Option(
        None, "--base-url", help="OpenAI-compatible endpoint: LLM-written retrieval abstracts"
    ),
    model: str | None = typer.Option(None, "--model", help="served model name for --base-url"),
    corpus: Path | None = typer.Option(None, "--corpus", help="corpus folder replacing the file's"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars"),
    seed: int | None = typer.Option(
        None, "--seed", help="split and training seed replacing the file's split.seed and seed"
    ),
    evals: list[str] | None = typer.Option(
        None, "--eval", help="evaluations replacing the profile's (repeatable; e.g. probe)"
    ),
    partial: bool = typer.Option(
        False, "--partial", help="report unfinished evaluations with the items scored so far"
    ),
    only: list[str] | None = typer.Option(
        None,
        "--only",
        help="run only these training/eval stages (names, or eval/ for all; repeatable)",
    ),
) -> None:
    """Build, train, evaluate and report every arm of the experiment (stages cached)."""
    from rich.console import Console

    from longqa.experiment.plan import make_plan, print_plan
    from longqa.experiment.schema import load_experiment

    exp = load_experiment(experiment)
    if corpus is not None:
        exp.corpus = str(corpus.resolve())
    if seed is not None:
        exp.split.seed, exp.seed = seed, seed
    if evals:
        from longqa.experiment.schema import experiment_from_dict

        tree = exp.model_dump(mode="json")
        tree["profiles"][profile]["evals"] = evals
        exp = experiment_from_dict(tree, exp.source)
    console = Console(stderr=True)
    if dry_run:
        print_plan(make_plan(exp, profile), console)
        return
    from data_builders import ablation
    from longqa.config.recipe import load_recipe
    from longqa.core.folder_lock import hold_for_command
    from longqa.core.quiet import library_progress_bars
    from longqa.experiment.run import run_experiment
    from longqa.train.cpu_memory import restart_for_cpu_training

    restart_for_cpu_training(load_recipe(exp.recipe), notice=console.print)
    library_progress_bars(progress)  # transformers' "Loading weights" bars follow --no-progress
    hold_for_command(out)

    run_experiment(exp, profile, out, datasets=ablation, resume=resume, base_url=base_url, llm_model=model,
                   console=console, progress=progress, argv=sys.argv[1:], only=only or None, partial=partial)  # fmt: skip
    if (out / "results.md").is_file():
        console.print(f"[green]done:[/] {out / 'results.md'}", highlight=False)


@app.command("pool")
def pool(
    runs: list[Path] = typer.Argument(..., help="finished run folders (one per seed)"),
    out: Path = typer.Option(..., "--out", help="pooled report (.md; a .json beside it)"),
) -> None:
    """Per-seed and pooled tables with paired comparisons over finished runs of one experiment."""
    from longqa.experiment.fair import pool_runs

    pool_runs(runs, out)
    print(out)
