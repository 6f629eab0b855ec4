"""`longqa export`: a trained adapter → a folder standard inference engines load with the right RoPE.

Thin wrapper over :func:`longqa.models.export_hf.export_adapter`; ``--gguf out.gguf [--type f16|q8_0]``
merges and then writes one GGUF file for llama.cpp/Ollama (:mod:`longqa.models.export_gguf`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    adapter: Annotated[
        Path, typer.Option("--adapter", help="adapter folder written by `longqa train`")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="output folder (replaced atomically); optional with --gguf"),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge/--keep-adapter", help="fold LoRA into the base weights (default: keep it)"
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option("--model", help="base model location (default: the adapter's base model)"),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="merged weights: bfloat16|float16|float32")
    ] = "bfloat16",
    from_nf4: Annotated[
        bool,
        typer.Option(
            "--from-nf4", help="merge into the de-quantised NF4 weights QLoRA trained against"
        ),
    ] = False,
    gguf: Annotated[
        Path,
        typer.Option(
            "--gguf", help="also write the merged model as one GGUF file (llama.cpp, Ollama)"
        ),
    ] = None,
    gguf_type: Annotated[
        str, typer.Option("--type", help="GGUF tensor type: f16 | q8_0 | f32")
    ] = "f16",
) -> None:
    """Merge (or keep) a LoRA adapter and write a config.json whose RoPE settings reproduce
    training in transformers, vLLM and other engines."""
    import logging

    from rich.console import Console

    from longqa.core.errors import LongqaError
    from longqa.core.faults import writing
    from longqa.core.folder_lock import hold_for_command
    from longqa.models.export_hf import export_adapter

    if dtype not in ("bfloat16", "float16", "float32"):
        raise LongqaError(f"--dtype {dtype}: expected bfloat16, float16 or float32")
    if out is None and gguf is None:
        raise LongqaError("--out is required (or --gguf FILE for a GGUF file only)")
    for target in (out, gguf):  # replaced as a whole: locked beside
        if target is not None:
            hold_for_command(target, beside=True)
    if gguf is not None:
        _export_gguf(adapter, out, gguf, gguf_type, base=model, dtype=dtype, from_nf4=from_nf4)
        return
    logging.getLogger("longqa.models.export_hf").setLevel(
        logging.ERROR
    )  # warnings are printed below
    err = Console(stderr=True)
    with err.status(f"exporting {adapter} → {out}"), writing(out):
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


def _export_gguf(
    adapter: Path, out: Path | None, gguf: Path, gguf_type: str, **merge_kw: object
) -> None:
    """Merge (into ``out`` or a temp folder), then write ``gguf``; RoPE checked before merging."""
    import logging
    import tempfile

    from rich.console import Console

    from longqa.core.errors import LongqaError
    from longqa.models.adapters import read_adapter_info, read_rope_spec
    from longqa.models.export_gguf import (
        OUT_TYPES,
        check_gguf_rope_spec,
        tokenizer_source,
        write_gguf_from_folder,
    )
    from longqa.models.export_hf import export_adapter

    if gguf_type not in OUT_TYPES:
        raise LongqaError(f"--type {gguf_type}: expected one of {', '.join(OUT_TYPES)}")
    check_gguf_rope_spec(read_rope_spec(adapter))
    base = str(merge_kw.get("base") or read_adapter_info(adapter)["base_model"])
    logging.getLogger("longqa.models.export_hf").setLevel(logging.ERROR)
    err = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix=".longqa-gguf-", dir=gguf.parent) as tmp:
        folder = out or Path(tmp) / "merged"
        with err.status(f"merging {adapter}"):
            summary = export_adapter(adapter, folder, merge=True, **merge_kw)
        for warning in summary["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {warning}")
        with err.status(f"writing {gguf} ({gguf_type})"):
            write_gguf_from_folder(
                folder, gguf, out_type=gguf_type, tokenizer=tokenizer_source(base)
            )
    params = summary["rope_parameters"]
    details = ", ".join(f"{k}={v}" for k, v in params.items() if k != "rope_type")
    typer.echo(f"wrote {gguf} ({gguf_type})" + (f" and merged model to {out}" if out else ""))
    typer.echo(
        f"rope: {params['rope_type']} ({details}); context_length={summary['max_position_embeddings']}"
    )
