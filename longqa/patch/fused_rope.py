"""Fused Triton RoPE inside a model's attention, reversibly: :func:`apply_fused_rope` /
:func:`revert_fused_rope` (called by :func:`longqa.patch.kernels.apply_kernels` for ``kernels.rope``).

Usage::

    from longqa.patch.fused_rope import apply_fused_rope, revert_fused_rope, FUSED_ROPE_CALLS
    state = apply_fused_rope(model)          # {"note": "fused RoPE on (16 attention layers)", ...}
    model(**batch)                           # FUSED_ROPE_CALLS["fused"] counts kernel calls
    revert_fused_rope(state)                 # the attention calls exactly what it called before

The attention of every family marked ``fused_rope`` in :mod:`longqa.patch.families` calls the name
``apply_rotary_pos_emb`` of its modeling file. Transformers binds that name in one of two forms, and
the patch takes the route each form offers:

* **hub-kernel form** (transformers >= 5.25 with the ``kernels`` package): the name holds a
  ``Func`` module made by ``kernels.use_kernel_forward_from_hub("rotary_pos_emb")`` and every
  attention instance owns a private copy in ``_kernel_funcs`` (older releases: ``_hidden_kernels``)
  to which the global routes its calls while that attention runs. This is the slot ``kernels.kernelize``
  fills with a hub kernel; the patch sets the private copy's ``forward`` the same way (an instance
  attribute), so only the patched model's layers change, with no global state and no hooks. Revert
  restores the instance's previous ``forward`` (a kernelized one included) or removes ours.
* **plain function** (older transformers, or without ``kernels``): the module-level function is
  swapped for a dispatcher that uses the kernel only while a patched attention module runs (forward
  pre/post hooks set a thread-local depth) and otherwise calls the original, so other models in the
  process are untouched; the original is restored when the last patched model is reverted.

Either way the rotation is :func:`longqa.ops.rope_triton.fused_rope` for ``(q, k, cos, sin)`` with
``unsqueeze_dim=1``; other call forms go to the original. Under autocast, fp32 q and k (a QLoRA
model's) leave already in the attention's dtype (:func:`attention_dtype`): the cast SDPA would make,
moved before the call, so transformers' attention drops the fp32 tensors instead of holding them
beside their copies until ``o_proj`` has run (same values and gradients).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from torch import nn

from longqa.core.errors import LongqaError
from longqa.patch.families import family_class_of, fused_rope_families, private_rope_module

_local = threading.local()
_patched_modules: dict[str, tuple[Any, int]] = {}  # modeling module name -> (original fn, users)
FUSED_ROPE_CALLS = {"fused": 0, "fallback": 0}
_MISSING = object()


def attention_dtype(q: torch.Tensor) -> torch.dtype | None:
    """The dtype the attention will read q and k in, when autocast lowers it (fp32 q under bf16
    autocast: SDPA, flash-attention and eager matmuls all cast first); else None (in place)."""
    device = q.device.type
    if not q.is_floating_point() or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if torch.finfo(dtype).bits < torch.finfo(q.dtype).bits else None


def _rotate(original: Callable, active: bool, q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN202
    """The fused kernel for a plain ``(q, k, cos, sin[, unsqueeze_dim=1])`` call, else ``original``."""
    unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
    plain_call = not args[1:] and not set(kwargs) - {"unsqueeze_dim"}
    if active and unsqueeze_dim == 1 and plain_call:
        from longqa.ops._triton_util import interpreting
        from longqa.ops.rope_triton import fused_rope

        dtype = attention_dtype(q)
        if q.is_cuda or interpreting():
            FUSED_ROPE_CALLS["fused"] += 1
            q, k = fused_rope(q, k, cos, sin)
        else:
            FUSED_ROPE_CALLS["fallback"] += 1
            q, k = original(q, k, cos, sin, *args, **kwargs)
        # autocast's cast before attention, done here: the caller then drops fp32 q and k
        return (q, k) if dtype is None else (q.to(dtype), k.to(dtype))
    FUSED_ROPE_CALLS["fallback"] += 1
    return original(q, k, cos, sin, *args, **kwargs)


def _make_dispatcher(original: Any) -> Any:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN202
        return _rotate(original, _rope_active(), q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.__wrapped__ = original  # type: ignore[attr-defined]
    apply_rotary_pos_emb._longqa_fused = True  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def _make_private_forward(previous: Callable) -> Callable:
    # ``self`` is unused: under torch.compile transformers calls this function with the global Func
    def forward(self, q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN202
        return _rotate(previous, True, q, k, cos, sin, *args, **kwargs)

    forward._longqa_fused = True  # type: ignore[attr-defined]
    return forward


def _rope_active() -> bool:
    return getattr(_local, "depth", 0) > 0


def _enter(module: nn.Module, args: Any) -> None:
    _local.depth = getattr(_local, "depth", 0) + 1


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    _local.depth = max(0, getattr(_local, "depth", 0) - 1)


def _attention_modules(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(attention module, its modeling module name) for every attention layer the kernel supports."""
    found = []
    for module in model.modules():
        family = family_class_of(module, "attention")
        if family is not None and family.fused_rope:
            found.append((module, family.modeling_name))
    return found


def _check_head_dims(attn: list[tuple[nn.Module, str]]) -> None:
    from longqa.ops.rope_triton import MAX_HEAD_DIM

    for module, _ in attn:
        head_dim = getattr(module, "head_dim", None)
        if head_dim is not None and (head_dim % 2 or head_dim > MAX_HEAD_DIM):
            raise LongqaError(
                f"kernels.rope: head_dim {head_dim} unsupported by the fused RoPE kernel; "
                f"supported: even sizes up to {MAX_HEAD_DIM} (set kernels.rope: false)"
            )


def apply_fused_rope(model: nn.Module) -> dict[str, Any]:
    """Route every supported attention layer's RoPE through the fused kernel; returns the state
    :func:`revert_fused_rope` undoes, with ``state["note"]`` saying what was done."""
    state: dict[str, Any] = {"handles": [], "rope_modules": [], "private": [], "note": ""}
    attn = _attention_modules(model)
    if not attn:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        state["note"] = (
            f"fused RoPE skipped: model type '{model_type}' not supported "
            f"(supported: {', '.join(fused_rope_families())})"
        )
        return state
    _check_head_dims(attn)
    plain = []
    for module, modname in attn:
        private = private_rope_module(module, sys.modules[modname])
        if private is None:
            plain.append((module, modname))
            continue
        previous = private.__dict__.get("forward", _MISSING)
        call_previous = (
            previous if previous is not _MISSING else type(private).forward.__get__(private)
        )
        if getattr(getattr(call_previous, "__func__", None), "_longqa_fused", False):
            continue  # already ours (apply_kernels reverts first; this guards direct callers)
        private.forward = MethodType(_make_private_forward(call_previous), private)
        state["private"].append((private, previous))
    for modname in sorted({n for _, n in plain}):
        mod = sys.modules[modname]
        if modname in _patched_modules:
            original, users = _patched_modules[modname]
            _patched_modules[modname] = (original, users + 1)
        else:
            original = mod.apply_rotary_pos_emb
            _patched_modules[modname] = (original, 1)
            mod.apply_rotary_pos_emb = _make_dispatcher(original)
        state["rope_modules"].append(modname)
    for module, _ in plain:
        state["handles"].append(module.register_forward_pre_hook(_enter))
        state["handles"].append(module.register_forward_hook(_exit, always_call=True))
    state["note"] = f"fused RoPE on ({len(attn)} attention layers)"
    state["route"] = "hub-kernel slot" if state["private"] else "module function"
    return state


def revert_fused_rope(state: dict[str, Any]) -> None:
    """Undo :func:`apply_fused_rope`: each private slot gets its previous ``forward`` back, each
    swapped module function its original once no patched model uses it."""
    for private, previous in state.get("private", []):
        if previous is _MISSING:
            private.__dict__.pop("forward", None)
        else:
            private.forward = previous
    state.get("private", []).clear()
    for handle in state.get("handles", []):
        handle.remove()
    state.get("handles", []).clear()
    for modname in state.get("rope_modules", []):
        original, users = _patched_modules[modname]
        if users <= 1:
            sys.modules[modname].apply_rotary_pos_emb = original
            del _patched_modules[modname]
        else:
            _patched_modules[modname] = (original, users - 1)
    state.get("rope_modules", []).clear()
