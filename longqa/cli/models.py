"""`longqa models list|prepare|convert`: see which base models are ready, convert them once.

Thin wrappers over :mod:`longqa.models.checkpoints` and :mod:`longqa.models.qwen_convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Model aliases, one-time GGUF preparation, original-Qwen conversion.", no_args_is_help=True
)


@app.command("list")
def list_cmd() -> None:
    """Show the model aliases, whether each is prepared, and where it lives."""
    from rich.console import Console
    from rich.table import Table

    from longqa.models.checkpoints import list_models

    table = Table(title="model aliases")
    for col in ("alias", "prepared", "path", "description"):
        table.add_column(col, overflow="fold")
    for row in list_models():
        table.add_row(
            row["name"],
            "[green]yes[/green]" if row["prepared"] else "no",
            row["path"] if row["prepared"] else row["source"],
            row["description"],
        )
    Console().print(table)
    Console().print("Also accepted: a .gguf file, a local HF folder, or a hub id (org/name).")


@app.command("prepare")
def prepare(
    name: Annotated[
        str, typer.Argument(help="alias (e.g. smollm2-135m), .gguf file, or local folder")
    ],
) -> None:
    """Convert a model once into the cache so later loads are fast and offline."""
    from longqa.models.checkpoints import is_prepared, prepare_model

    already = is_prepared(name)
    path = prepare_model(name, progress=True)
    typer.echo(f"{name}: {'already prepared' if already else 'prepared'} at {path}")


@app.command("convert")
def convert(
    src: Annotated[
        Path, typer.Argument(help="original-Qwen checkpoint folder (e.g. Qwen-14B-Chat)")
    ],
    out: Annotated[Path, typer.Argument(help="output folder (native Qwen2 layout)")],
) -> None:
    """Convert an original-Qwen checkpoint to the native transformers Qwen2 layout on disk."""
    from longqa.models.qwen_convert import convert_checkpoint

    result = convert_checkpoint(src, out, progress=True)
    typer.echo(f"converted {src} -> {result or out}")
