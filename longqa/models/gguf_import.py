"""GGUF files → Hugging Face folders: read the architecture from the header, de-quantise once.

Usage (normally through :func:`longqa.models.checkpoints.prepare_model`, which picks the cache folder)::

    from longqa.models.gguf_import import convert_gguf, gguf_architecture
    gguf_architecture("model.gguf")           # "llama"
    convert_gguf("model.gguf", "out_dir")     # float32 safetensors + tokenizer + chat template

transformers' GGUF loader does the de-quantisation; this module checks the architecture first (so
an unsupported file fails in one line, before any tensor is read), writes into a temp folder and
renames it into place, so an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import keep_umask
from longqa.patch.families import gguf_architectures

MARKER = "longqa_source.json"  # written last: its presence means the folder is complete

_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_gguf_value(fh: Any, vtype: int) -> None:
    if vtype == 8:  # string: uint64 length + bytes
        fh.seek(struct.unpack("<Q", fh.read(8))[0], 1)
    elif vtype == 9:  # array: uint32 element type + uint64 count + elements
        etype, count = struct.unpack("<IQ", fh.read(12))
        if etype in _GGUF_SCALAR_SIZES:
            fh.seek(_GGUF_SCALAR_SIZES[etype] * count, 1)
        else:
            for _ in range(count):
                _skip_gguf_value(fh, etype)
    elif vtype in _GGUF_SCALAR_SIZES:
        fh.seek(_GGUF_SCALAR_SIZES[vtype], 1)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_architecture(path: str | os.PathLike[str]) -> str:
    """``general.architecture`` of a GGUF file, read from its key/value header only (the GGUF v2/v3
    layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), without mapping tensors."""
    try:
        with open(path, "rb") as fh:
            magic, version = fh.read(4), struct.unpack("<I", fh.read(4))[0]
            if magic != b"GGUF" or version < 2:
                raise ValueError("bad magic or unsupported GGUF version")
            _n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))
            for _ in range(n_kv):
                key = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode("utf-8")
                vtype = struct.unpack("<I", fh.read(4))[0]
                if key == "general.architecture" and vtype == 8:
                    size = struct.unpack("<Q", fh.read(8))[0]
                    return fh.read(size).decode("utf-8")
                _skip_gguf_value(fh, vtype)
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as exc:
        raise LongqaError(f"{path}: not a readable GGUF file ({exc})") from None
    raise LongqaError(f"{path}: GGUF file has no general.architecture field")


def _status(progress: bool, message: str) -> Any:
    """A rich spinner while a step runs (a no-op context when ``progress`` is False)."""
    import contextlib

    if not progress:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _done(progress: bool, message: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[green]✓[/green] {message}")


def _drop_gguf_marker(model: Any) -> None:
    """The GGUF loader leaves its quantiser attached although the weights are already plain
    float tensors; detach it so ``save_pretrained`` writes ordinary safetensors."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model.config, "_model_name_or_path"):  # general.name, not a config key
        del model.config._model_name_or_path


def convert_gguf(
    gguf: str | os.PathLike[str], out: str | os.PathLike[str], progress: bool = True
) -> Path:
    """De-quantise a GGUF file into an HF folder ``out`` (float32 safetensors, tokenizer, chat
    template), built in a temp folder and renamed into place. Returns ``out``."""
    gguf, out = Path(gguf), Path(out)
    arch = gguf_architecture(gguf)
    if arch not in gguf_architectures():
        raise LongqaError(
            f"{gguf}: GGUF architecture '{arch}' is not supported; supported: "
            f"{', '.join(gguf_architectures())}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with _status(progress, f"reading tokenizer from {gguf.name}"):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tok.save_pretrained(tmp)
        _done(progress, "tokenizer" + (" + chat template" if tok.chat_template else ""))
        with _status(progress, f"de-quantising {gguf.name} ({arch})"):
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        _done(
            progress,
            f"weights de-quantised ({sum(p.numel() for p in model.parameters()):,} params)",
        )
        with _status(progress, "writing safetensors"):
            _drop_gguf_marker(model)
            model.save_pretrained(tmp, safe_serialization=True)
            marker = {
                "source": str(gguf.resolve()),
                "architecture": arch,
                "size": gguf.stat().st_size,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            keep_umask(tmp)  # mkdtemp makes it private (700), safetensors writes 600
        del model
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / MARKER).is_file():  # not a concurrent finished copy: replace it
                shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
        _done(progress, f"saved {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
