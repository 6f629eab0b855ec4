"""`longqa export`: a trained adapter → a folder standard inference engines load with the right RoPE.

Thin wrapper over :func:`longqa.models.export.export_adapter`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    adapter: Path = typer.Option(..., "--adapter", help="adapter folder written by `longqa train`"),
    out: Path = typer.Option(..., "--out", help="output folder (replaced atomically)"),
    merge: bool = typer.Option(
        False, "--merge/--keep-adapter", help="fold LoRA into the base weights (default: keep it)"
    ),
    model: str | None = typer.Option(
        None, "--model", help="base model location (default: the adapter's base model)"
    ),
    dtype: str = typer.Option(
        "bfloat16", "--dtype", help="merged weights: bfloat16|float16|float32"
    ),
    from_nf4: bool = typer.Option(
        False, "--from-nf4", help="merge into the de-quantised NF4 weights QLoRA trained against"
    ),
) -> None:
    """Merge (or keep) a LoRA adapter and write a config.json whose RoPE settings reproduce
    training in transformers, vLLM and other engines."""
    import logging

    from rich.console import Console

    from longqa.core.errors import LongqaError
    from longqa.models.export import export_adapter

    if dtype not in ("bfloat16", "float16", "float32"):
        raise LongqaError(f"--dtype {dtype}: expected bfloat16, float16 or float32")
    logging.getLogger("longqa.models.export").setLevel(logging.ERROR)  # warnings are printed below
    err = Console(stderr=True)
    with err.status(f"exporting {adapter} → {out}"):
        summary = export_adapter(
            adapter, out, merge=merge, base=model, dtype=dtype, from_nf4=from_nf4
        )
    for warning in summary["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    params = summary["rope_parameters"]
    details = ", ".join(f"{k}={v}" for k, v in params.items() if k != "rope_type")
    kind = "merged model" if merge else "adapter + base_model_config/config.json"
    typer.echo(f"wrote {kind} to {summary['out']}")
    typer.echo(
        f"rope: {params['rope_type']} ({details}); "
        f"max_position_embeddings={summary['max_position_embeddings']}"
    )
