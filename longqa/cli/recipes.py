"""`longqa recipes list|show`: the shipped training recipes and their resolved values.

Thin wrappers over :mod:`longqa.config.recipe`.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Shipped training recipes (list, show resolved YAML).", no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """Name and one-line description of every shipped recipe."""
    from rich.console import Console
    from rich.table import Table

    from longqa.config.recipe import list_recipes, load_recipe

    table = Table(title="recipes")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name in list_recipes():
        table.add_row(name, load_recipe(name).description)
    Console().print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="shipped recipe name or path to a YAML file")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="dotted override key=value, e.g. train.lr=1e-4 (repeatable)"),
    ] = None,
) -> None:
    """Print the resolved recipe (defaults filled in, overrides applied) as YAML."""
    from longqa.config.recipe import dump_recipe, load_recipe

    typer.echo(dump_recipe(load_recipe(name, overrides or None)), nl=False)
