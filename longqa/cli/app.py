"""Root of the ``longqa`` command line.

Every command module keeps its top-level imports light (typer, pathlib) and imports torch,
transformers and friends inside the command body, so ``longqa --help`` stays fast. Commands are thin:
they parse flags and call a library function that notebooks can call too.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from longqa.cli import (
    analyze,
    build_data,
    data,
    doctor,
    eval,
    experiment,
    export,
    generate,
    models,
    recipes,
    rope,
    train,
)
from longqa.cli.examples import add_examples
from longqa.cli.help import install_help_layout
from longqa.cli.run import guard_commands
from longqa.core.errors import LongqaError
from longqa.core.interrupt import EXIT_CODE, MESSAGE

install_help_layout()

app = typer.Typer(
    name="longqa",
    help="Turn a short-context open LLM into an accurate long-context one on a single GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("build-data")(build_data.build_data)
app.command("train")(train.train)
app.add_typer(eval.app, name="eval")
app.add_typer(data.app, name="data")
app.add_typer(analyze.app, name="analyze")
app.add_typer(recipes.app, name="recipes")
app.add_typer(rope.app, name="rope")
app.add_typer(models.app, name="models")
app.command("export")(export.export)
app.command("generate")(generate.generate)
app.command("doctor")(doctor.doctor)
app.add_typer(experiment.app, name="experiment")
add_examples(app)
# Ctrl-C/SIGTERM and disk faults as one line for every command; --wait where a folder is locked
guard_commands(
    app,
    waiting={
        "build-data",
        "train",
        "eval",
        "analyze",
        "experiment run",
        "export",
        "models prepare",
    },
)


def _print_version(value: bool) -> None:
    if value:
        from longqa import __version__

        print(f"longqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Turn a short-context open LLM into an accurate long-context one on a single GPU."""


def main() -> None:
    """Console-script entry point: runs the app and turns user errors into one line + exit 2."""
    try:
        app()
    except LongqaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(MESSAGE, file=sys.stderr)
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    main()
