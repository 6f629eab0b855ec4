"""`longqa rope show`: inspect what a RoPE scaling method does to each rotary pair.

Example::

    longqa rope show --method yarn --factor 4 --original-length 2048 --base 10000 --head-dim 128
    longqa rope show --method dynamic-yarn --seq-len 12000 --original-length 8192 --json

Thin wrapper over :func:`longqa.ops.rope_scaling.rope_report`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="Inspect RoPE scaling methods.", no_args_is_help=True)


@app.callback()
def _rope() -> None:
    """Inspect RoPE scaling methods."""


@app.command("show")
def show(
    method: Annotated[str, typer.Option(help="scaling method (e.g. yarn, dynamic-yarn, linear)")],
    factor: Annotated[float | None, typer.Option(help="scale s = target / original length")] = None,
    original_length: Annotated[int, typer.Option(help="original (pretraining) window L0")] = 2048,
    base: Annotated[float, typer.Option(help="the model's rope base (rope_theta)")] = 10000.0,
    head_dim: Annotated[int, typer.Option(help="rotary head dimension")] = 128,
    seq_len: Annotated[
        int | None,
        typer.Option(help="current length for dynamic methods (default: factor × original)"),
    ] = None,
    new_base: Annotated[float | None, typer.Option(help="new base (abf; ntk/yarn on top)")] = None,
    beta_fast: Annotated[float | None, typer.Option(help="yarn: extrapolation bound")] = None,
    beta_slow: Annotated[float | None, typer.Option(help="yarn: interpolation bound")] = None,
    margin: Annotated[int | None, typer.Option(help="dynamic-yarn: length margin")] = None,
    low_freq_factor: Annotated[float | None, typer.Option(help="llama3")] = None,
    high_freq_factor: Annotated[float | None, typer.Option(help="llama3")] = None,
    ntk_variant: Annotated[str | None, typer.Option(help="dynamic-ntk: hf or qwen")] = None,
    attention_factor: Annotated[float | None, typer.Option(help="override mscale")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Print each rotary pair's wavelength before/after scaling and the attention factor."""
    from longqa.core.errors import LongqaError
    from longqa.ops.rope_scaling import is_dynamic, rope_report
    from longqa.patch.rope import rope_spec_from_options

    for name, value in (("original-length", original_length), ("head-dim", head_dim)):
        if value < 1:
            raise LongqaError(f"--{name} must be >= 1 (got {value})")
    if base <= 1:
        raise LongqaError(f"--base must be > 1 (got {base})")
    spec = rope_spec_from_options(
        method,
        factor=factor,
        original_length=original_length,
        base=new_base,
        beta_fast=beta_fast,
        beta_slow=beta_slow,
        margin=margin,
        low_freq_factor=low_freq_factor,
        high_freq_factor=high_freq_factor,
        ntk_variant=ntk_variant,
        attention_factor=attention_factor,
    )
    if spec is None:
        raise LongqaError("--method is empty; give a rope method name")
    if seq_len is None and is_dynamic(spec.method):
        seq_len = int((spec.factor or 1.0) * original_length)
    report = rope_report(
        spec.model_dump(),
        head_dim=head_dim,
        base=base,
        original_max_position_embeddings=original_length,
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
