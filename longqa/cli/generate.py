"""`longqa generate`: stream a reply from a base model (+ adapter, + RoPE spec), or chat with it.

Thin wrapper over :mod:`longqa.eval.generate`. The RoPE flag group (``--rope``, ``--rope-<field>``)
replaces the adapter's saved spec as a whole; ``--rope-*`` values without ``--rope`` are an error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from longqa.cli.options import rope_options
from longqa.config.recipe import RopeConfig


@rope_options
def generate(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="base model: alias, folder, .gguf or hub id (default: adapter's)"
        ),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="adapter from `longqa train`")
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option("--prompt-file", help="prompt text, read as is (default: stdin)")
    ] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="multi-turn chat: one stdin line per turn")
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="system message for --chat")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="plain text prompt, no chat template")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="seed for sampling")] = None,
    rope: RopeConfig | None = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32|bfloat16|float16")] = "float32",
    quantization: Annotated[str, typer.Option("--quantization", help="none|nf4")] = "none",
) -> None:
    """Generate from a prompt file (or stdin), streaming the reply to stdout; --chat for a loop."""
    from rich.console import Console

    from longqa.core.errors import LongqaError
    from longqa.eval.generate import chat_loop, generate_text
    from longqa.models.load import load

    err = Console(stderr=True)
    if not chat:  # read the prompt before the (slow) model load so bad input fails fast
        if prompt_file is not None:
            if not prompt_file.is_file():
                raise LongqaError(f"prompt file not found: {prompt_file}")
            prompt = prompt_file.read_text(encoding="utf-8")
        elif sys.stdin.isatty():
            raise LongqaError("give --prompt-file FILE, pipe a prompt on stdin, or use --chat")
        else:
            prompt = sys.stdin.read()
        if not prompt.strip():
            raise LongqaError(f"empty prompt ({prompt_file or 'stdin'})")
    with err.status("loading model"):
        lm, tok, spec = load(
            model,
            adapter=str(adapter) if adapter else None,
            rope=rope,
            dtype=dtype,
            quantization=quantization,
        )
    if spec is not None:
        err.print(f"rope: {spec.method} ({', '.join(f'{k}={v}' for k, v in _set(spec).items())})")
    gen = {
        "spec": spec,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "template": not raw,
        "warn": lambda m: err.print(f"[yellow]warning:[/yellow] {m}"),
    }
    if chat:
        chat_loop(
            lm,
            tok,
            read=lambda: sys.stdin.readline() or None,
            out=sys.stdout,
            prompt_out=sys.stderr if sys.stdin.isatty() else None,
            system=system,
            **gen,
        )
    else:
        generate_text(lm, tok, prompt, stream=sys.stdout, **gen)


def _set(spec) -> dict:
    """The spec's fields that differ from their defaults (for a short status line)."""
    defaults = type(spec)().model_dump()
    return {k: v for k, v in spec.model_dump().items() if k != "method" and v != defaults[k]}
