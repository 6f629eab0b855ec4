"""`longqa train`: QLoRA training of a recipe's phases (or `--plan` for a memory estimate).

Examples::

    longqa train --recipe smollm2-135m-yarn16k --max-steps 3 --data runs/data/mix
    longqa train --recipe smollm2-135m-yarn16k --data chat.jsonl --data alpaca.json:0.5
    longqa train --recipe smollm2-135m-yarn16k --data qa.csv --data-columns question,answer
    longqa train --recipe smollm2-135m-yarn16k --pretrain-data my_texts/ --data chat.jsonl
    longqa train --recipe qwen14b-yarn32k --plan --gpu-mem 80
    longqa train --recipe my.yaml --resume --set train.lr=1e-4
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    recipe: Annotated[
        str, typer.Option("--recipe", help="shipped recipe name or path to a YAML file")
    ],
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="PATH[:WEIGHT] replacing the recipe's sft data (repeatable; formats detected per row)",
        ),
    ] = None,
    data_format: Annotated[
        str,
        typer.Option(
            "--data-format",
            help="force the row format of --data: messages, openai, sharegpt, alpaca, columns, text",
        ),
    ] = "auto",  # fmt: skip
    data_columns: Annotated[
        str | None,
        typer.Option(
            "--data-columns",
            help="USER,ASSISTANT[,SYSTEM] column names of --data rows (CSV/TSV/Parquet/JSON), when "
            "they are not prompt/response, question/answer, instruction/output, …",
        ),
    ] = None,
    pretrain_data: Annotated[
        list[str] | None,
        typer.Option(
            "--pretrain-data",
            help="PATH[:WEIGHT] of your own text for continued pretraining (.txt/.md files or "
            'folders, {"text"} rows; repeatable): replaces the recipe\'s pretrain data, adding a '
            "pretrain phase when it has none",
        ),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            "--skip-bad-rows",
            help="skip unusable rows instead of failing: the first of each kind is shown, every one "
            "listed in skipped_rows.txt in the run folder",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="fail when a pretraining phase has no data (default: skip it)"
        ),
    ] = False,
    pretrain_on_sft_text: Annotated[
        bool,
        typer.Option(
            "--pretrain-on-sft-text",
            help="a pretraining phase without data trains on the full text of --data instead",
        ),
    ] = False,  # fmt: skip
    out: Annotated[
        Path | None, typer.Option("--out", help="output dir (default: the recipe's)")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="cap every phase at N optimizer steps")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the last checkpoint")
    ] = False,
    resume_from_previous: Annotated[
        bool,
        typer.Option(
            "--resume-from-previous",
            help="--resume, setting an incomplete last checkpoint aside for the one before",
        ),
    ] = False,
    plan: Annotated[
        bool, typer.Option("--plan", help="print the GPU memory plan and exit")
    ] = False,
    gpu_mem: Annotated[
        float, typer.Option("--gpu-mem", min=1, help="GPU memory in GB for --plan")
    ] = 80.0,
    launch: Annotated[
        str | None,
        typer.Option("--launch", help="train on several GPUs: ddp, fsdp, deepspeed or ulysses"),
    ] = None,
    gpus: Annotated[
        int, typer.Option("--gpus", min=1, help="GPUs for --launch (and for --plan)")
    ] = 1,
    print_command: Annotated[
        bool,
        typer.Option(
            "--print-command", help="with --launch: print the accelerate command, don't run it"
        ),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="recipe override key=value (repeatable), e.g. train.lr=1e-4"),
    ] = None,
) -> None:
    """Train a LoRA adapter with the recipe's RoPE scaling (phases: pretrain, sft)."""
    from rich.console import Console

    from longqa.config.recipe import load_recipe

    rec = load_recipe(recipe, overrides=set_ or [])
    if plan:
        from longqa.plan.memory import plan_memory, render_plan

        render_plan(plan_memory(rec, gpu_mem_gb=gpu_mem), Console())
        if gpus > 1:
            from longqa.plan.parallel import plan_parallel, render_parallel_plan

            render_parallel_plan(plan_parallel(rec, gpus, gpu_mem_gb=gpu_mem), Console())
        return
    if launch is not None:
        _launch(launch, gpus, print_command)
        return
    from longqa.core.folder_lock import hold_for_command

    hold_for_command(out if out is not None else rec.output_dir)  # before the heavy imports
    from longqa.train.cpu_memory import restart_for_cpu_training
    from longqa.train.phases import RunInputs
    from longqa.train.trainer import run_training

    restart_for_cpu_training(rec, notice=Console(stderr=True).print)
    inputs = RunInputs(
        data=tuple(data or ()),
        data_format=data_format,
        data_columns=data_columns,
        pretrain_data=tuple(pretrain_data or ()),
        out=str(out) if out is not None else None,
        max_steps=max_steps,
        strict=strict,
        pretrain_on_sft_text=pretrain_on_sft_text,
    )
    final = run_training(
        rec,
        inputs,
        resume=resume,
        resume_from_previous=resume_from_previous,
        skip_bad_rows=skip_bad_rows,
        console=Console(stderr=True),
    )
    print(final)


def _launch(mode: str, gpus: int, print_only: bool) -> None:
    """Re-run this very `longqa train` command on every rank through `accelerate launch`."""
    import os
    import subprocess
    import sys

    from longqa.train.launch import check_can_launch, launch_command, render

    argv = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else []
    cmd = launch_command(mode, gpus, argv)
    print(render(cmd), flush=True)
    if print_only:
        return
    check_can_launch(mode, gpus)
    from longqa.core.interrupt import wait_for_child

    # Ctrl-C: every rank stops at a step with its checkpoint; this process waits for them
    raise typer.Exit(wait_for_child(subprocess.Popen(cmd, env=os.environ.copy())))
