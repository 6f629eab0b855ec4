"""Shared utilities for the Triton kernels in ``longqa.ops``.

Kernels are written as plain module-level functions and compiled on first use with
:func:`jit`, which reads ``TRITON_INTERPRET`` at *call* time rather than at import time. That way a
process may import :mod:`longqa.ops` before a test sets ``TRITON_INTERPRET=1`` and the kernels still
run in the CPU interpreter (triton 3.x decides interpreter vs. compiler when ``triton.jit`` wraps a
function).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from longqa.core.errors import LongqaError

_CACHE: dict[tuple[Callable[..., Any], bool], Any] = {}


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter (as triton itself reads it)."""
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - no triton, or an old one without knobs
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")
    return bool(knobs.runtime.interpret)


def jit(fn: Callable[..., Any]) -> Any:
    """``triton.jit(fn)``, cached per interpreter mode."""
    key = (fn, interpreting())
    if key not in _CACHE:
        import triton

        _CACHE[key] = triton.jit(fn)
    return _CACHE[key]


def check_device(what: str, *tensors: torch.Tensor) -> None:
    """Triton needs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    for t in tensors:
        if t.device.type != "cuda" and not interpreting():
            raise LongqaError(
                f"{what}: the Triton kernel needs CUDA tensors (got {t.device}); "
                "set TRITON_INTERPRET=1 to run it on CPU in the interpreter"
            )


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
