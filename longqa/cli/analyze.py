"""`longqa analyze …` (not available yet)."""

from __future__ import annotations

import typer

from longqa.errors import LongqaError

app = typer.Typer(help="analyze (not available yet).", no_args_is_help=True)


@app.callback(invoke_without_command=True)
def _not_yet() -> None:
    raise LongqaError("`longqa analyze` is not available yet (it arrives with the analysis work)")
