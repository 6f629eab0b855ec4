"""`longqa data inspect PATH`: detected format, rows, token lengths vs max_length, trained share.

Examples::

    longqa data inspect chat.jsonl --recipe smollm2-135m-yarn16k
    longqa data inspect alpaca.json --tokenizer smollm2-135m --max-length 4096
    longqa data inspect corpus/ --format text

A thin wrapper over :func:`longqa.data.inspection.inspect_dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Look at a dataset before training on it.", no_args_is_help=True)


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="dataset file or folder (any supported format)")],
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", help="recipe whose tokenizer and train.max_length to measure against"
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="tokenizer (alias/folder/hub id); default: the recipe's model"
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", min=1, help="length to compare with (default: the recipe's)"),
    ] = None,
    data_format: Annotated[str, typer.Option("--format", help="force the row format")] = "auto",
    data_columns: Annotated[
        str | None,
        typer.Option(
            "--data-columns", help="USER,ASSISTANT[,SYSTEM] column names of prompt/response rows"
        ),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option("--skip-bad-rows", help="count unusable rows instead of failing on the first"),
    ] = False,
) -> None:
    """Print what `longqa train --data PATH` would read from PATH."""
    from longqa.data.inspection import inspect_dataset

    tok, name, limit = None, tokenizer, max_length
    if recipe is not None:
        from longqa.config.recipe import load_recipe

        rec = load_recipe(recipe)
        limit = limit or rec.train.max_length
        name = name or rec.model.name
    if name is not None:
        from longqa.models.checkpoints import load_tokenizer

        if recipe is not None and tokenizer is None:
            tok = load_tokenizer(
                name, layout=rec.model.layout, trust_remote_code=rec.model.trust_remote_code
            )
        else:
            tok = load_tokenizer(name)
    report = inspect_dataset(
        path,
        tokenizer=tok,
        tokenizer_name=name,
        max_length=limit,
        fmt=data_format,
        skip_bad_rows=skip_bad_rows,
        columns=data_columns,
    )
    typer.echo("\n".join(report.lines()))
