"""`longqa eval …` (not available yet)."""

from __future__ import annotations

import typer

from longqa.errors import LongqaError

app = typer.Typer(help="eval (not available yet).", no_args_is_help=True)


@app.callback(invoke_without_command=True)
def _not_yet() -> None:
    raise LongqaError("`longqa eval` is not available yet (it arrives with the evaluation work)")
