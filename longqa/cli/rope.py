"""`longqa rope show` / `longqa rope methods`: what a RoPE scaling method does to each rotary pair.

Example::

    longqa rope show --rope yarn --rope-factor 4 --rope-original-max-position-embeddings 2048 \\
        --rope-theta 10000 --head-dim 128
    longqa rope show --rope dynamic-yarn --seq-len 12000 \\
        --rope-original-max-position-embeddings 8192 --json

The spec is the same RoPE flag group every command takes (``--rope``, ``--rope-<field>``); the
model is described by ``--rope-theta`` (its base) and ``--head-dim``. Thin wrapper over
:func:`longqa.ops.rope_scaling.rope_report`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from longqa.cli.options import rope_options
from longqa.config.recipe import RopeConfig

app = typer.Typer(help="Inspect RoPE scaling methods.", no_args_is_help=True)

DEFAULT_WINDOW = 2048


@app.callback()
def _rope() -> None:
    """Inspect RoPE scaling methods."""


@app.command("methods")
def methods() -> None:
    """List the RoPE scaling methods (the values of --rope) with a one-line summary each."""
    from longqa.ops.rope_scaling import available_methods, describe

    for name in available_methods():
        typer.echo(f"{name:14} {describe(name)}")


@app.command("show")
@rope_options
def show(
    rope: RopeConfig | None = None,
    rope_theta: Annotated[float, typer.Option(help="the model's own rope base (rope_theta)")] = 1e4,
    head_dim: Annotated[int, typer.Option(help="rotary head dimension")] = 128,
    seq_len: Annotated[
        int | None,
        typer.Option(help="current length for dynamic methods (default: factor × original)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Print each rotary pair's wavelength before/after scaling and the attention factor.

    The model's original window is --rope-original-max-position-embeddings (default 2048).
    """
    from longqa.core.errors import LongqaError
    from longqa.ops.rope_scaling import is_dynamic, rope_report

    if rope is None:
        raise LongqaError("rope show needs --rope METHOD (`longqa rope methods` lists them)")
    if head_dim < 1:
        raise LongqaError(f"--head-dim must be >= 1 (got {head_dim})")
    if rope_theta <= 1:
        raise LongqaError(f"--rope-theta must be > 1 (got {rope_theta})")
    window = rope.original_max_position_embeddings or DEFAULT_WINDOW
    if seq_len is None and is_dynamic(rope.method):
        seq_len = int((rope.factor or 1.0) * window)
    report = rope_report(
        rope.model_dump(),
        head_dim=head_dim,
        base=rope_theta,
        original_max_position_embeddings=window,
        seq_len=seq_len,
    )
    if as_json:
        typer.echo(json.dumps(report))
        return
    _print_table(report)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"RoPE {report['method']}: head_dim {report['head_dim']}, base {report['base']:g}, "
    title += f"original window {report['original_max_position_embeddings']}"
    if report["dynamic"]:
        title += f", current length {report['seq_len']}"
    table = Table(title=title)
    for col in ("pair", "wavelength before", "wavelength after", "scale applied"):
        table.add_column(col, justify="right")
    rows = zip(
        report["wavelength_before"], report["wavelength_after"], report["scale"], strict=True
    )
    for i, (before, after, scale) in enumerate(rows):
        table.add_row(str(i), f"{before:,.2f}", f"{after:,.2f}", f"{scale:.4f}")
    console = Console()
    console.print(table)
    console.print(f"attention factor: {report['attention_factor']:.6f}")
