"""Switch the recipe's kernels and memory features on a loaded HF model, reversibly.

Usage::

    from longqa.patch.kernels import apply_kernels, revert_kernels
    model.activation_checkpointing_enable()        # first: offloading wraps its checkpoint function
    notes = apply_kernels(model, recipe.kernels, recipe.memory)   # e.g. ["fused RoPE on (16 layers)"]
    revert_kernels(model)                          # back to the unpatched model

* ``kernels.rope``: the attention of the families marked ``fused_rope`` in
  :mod:`longqa.patch.families` calls the module-level ``apply_rotary_pos_emb`` of its modeling file. That name is swapped for a dispatcher which, while a
  patched model's attention module is running (forward pre/post hooks set a flag), rotates q and k
  with :func:`longqa.ops.rope_triton.fused_rope`, and otherwise calls the original function, so other
  models in the process are untouched. The original is restored when the last patched model is
  reverted. Library source is never edited. Needs CUDA (or ``force_triton=True`` with
  ``TRITON_INTERPRET=1``, used by the tests). Under autocast, fp32 q and k (a QLoRA model's) leave
  the dispatcher already in the attention's dtype (:func:`attention_dtype`): the cast SDPA would
  make, moved before the attention call, so transformers' attention drops the fp32 tensors instead
  of holding them beside their copies until ``o_proj`` has run (same values and gradients).
* ``kernels.chunked_ce`` is not a patch: it selects the chunked path of the training loss,
  :func:`longqa.ops.causal_lm.causal_lm_loss`.
* ``kernels.tiled_mlp``: :func:`longqa.patch.tiled_mlp.apply_tiled_mlp` runs every gated MLP over
  sequence tiles of ``kernels.tiled_mlp_tile`` tokens (CPU and GPU); ``kernels.tiled_mlp_norm`` moves
  each layer's post-attention RMSNorm into those tiles.
* ``kernels.lean_rmsnorm``: :func:`longqa.patch.rmsnorm.apply_lean_rmsnorm` makes every family
  RMSNorm save its input and ``1/rms`` instead of the fp32 normalised values (CPU and GPU, exact).
* ``kernels.lean_lora_dropout``: :func:`longqa.patch.lora_dropout.apply_lean_lora_dropout` fuses
  each LoRA adapter's dropout into its ``lora_A`` (input saved once, bit-packed mask).
* ``memory.bf16_residual``: :func:`longqa.patch.residual.apply_bf16_residual` keeps a QLoRA
  model's residual stream in the bf16 compute dtype (frozen embeddings, norm outputs).
* ``memory.offload_activations``: :class:`longqa.ops.offload.ActivationOffloader` on every
  gradient-checkpointed decoder layer (CUDA only).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from torch import nn

from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.core.errors import LongqaError
from longqa.ops.offload import ActivationOffloader
from longqa.patch.families import family_class_of, fused_rope_families
from longqa.patch.lora_dropout import apply_lean_lora_dropout, revert_lean_lora_dropout
from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

_STATE_ATTR = "_longqa_kernels"
_local = threading.local()
_patched_modules: dict[str, tuple[Any, int]] = {}  # modeling module name -> (original fn, users)
FUSED_ROPE_CALLS = {"fused": 0, "fallback": 0}


def _rope_active() -> bool:
    return getattr(_local, "depth", 0) > 0


def _make_dispatcher(original: Any) -> Any:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN202
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        plain_call = not args[1:] and not set(kwargs) - {"unsqueeze_dim"}
        if _rope_active() and unsqueeze_dim == 1 and plain_call:
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

    apply_rotary_pos_emb.__wrapped__ = original  # type: ignore[attr-defined]
    apply_rotary_pos_emb._longqa_fused = True  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def attention_dtype(q: torch.Tensor) -> torch.dtype | None:
    """The dtype the attention will read q and k in, when autocast lowers it (fp32 q under bf16
    autocast: SDPA, flash-attention and eager matmuls all cast first); else None (in place)."""
    device = q.device.type
    if not q.is_floating_point() or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if torch.finfo(dtype).bits < torch.finfo(q.dtype).bits else None


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


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _install_rope(model: nn.Module, state: dict[str, Any]) -> str:
    from longqa.ops.rope_triton import MAX_HEAD_DIM

    attn = _attention_modules(model)
    if not attn:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        return (
            f"fused RoPE skipped: model type '{model_type}' not supported "
            f"(supported: {', '.join(fused_rope_families())})"
        )
    for module, _ in attn:
        head_dim = getattr(module, "head_dim", None)
        if head_dim is not None and (head_dim % 2 or head_dim > MAX_HEAD_DIM):
            raise LongqaError(
                f"kernels.rope: head_dim {head_dim} unsupported by the fused RoPE kernel; "
                f"supported: even sizes up to {MAX_HEAD_DIM} (set kernels.rope: false)"
            )
    for modname in sorted({n for _, n in attn}):
        mod = sys.modules[modname]
        if modname in _patched_modules:
            original, users = _patched_modules[modname]
            _patched_modules[modname] = (original, users + 1)
        else:
            original = mod.apply_rotary_pos_emb
            _patched_modules[modname] = (original, 1)
            mod.apply_rotary_pos_emb = _make_dispatcher(original)
        state["rope_modules"].append(modname)
    for module, _ in attn:
        state["handles"].append(module.register_forward_pre_hook(_enter))
        state["handles"].append(module.register_forward_hook(_exit, always_call=True))
    return f"fused RoPE on ({len(attn)} attention layers)"


def _uninstall_rope(state: dict[str, Any]) -> None:
    for handle in state["handles"]:
        handle.remove()
    state["handles"].clear()
    for modname in state["rope_modules"]:
        original, users = _patched_modules[modname]
        if users <= 1:
            sys.modules[modname].apply_rotary_pos_emb = original
            del _patched_modules[modname]
        else:
            _patched_modules[modname] = (original, users - 1)
    state["rope_modules"].clear()


def apply_kernels(
    model: nn.Module,
    kernels: KernelsConfig,
    memory: MemoryConfig,
    *,
    force_triton: bool = False,
    offloader: ActivationOffloader | None = None,
    compute_dtype: torch.dtype | None = None,
) -> list[str]:
    """Turn on what ``kernels`` / ``memory`` ask for; returns one note per feature considered.

    GPU-only features are skipped on a CPU model with a note. ``force_triton`` installs fused RoPE
    on CPU too (for ``TRITON_INTERPRET=1``); ``offloader`` replaces the default offloader;
    ``compute_dtype`` is the training's mixed-precision dtype (``memory.bf16_residual`` needs bf16).
    """
    revert_kernels(model)
    device = _model_device(model)
    on_cuda = device.type == "cuda"
    state: dict[str, Any] = {"handles": [], "rope_modules": [], "offloader": None, "notes": []}
    notes: list[str] = []
    if kernels.rope:
        if on_cuda or force_triton:
            notes.append(_install_rope(model, state))
        else:
            notes.append(f"fused RoPE skipped: needs CUDA (model is on {device.type})")
    # norm patches stack, reverted in the reverse order: lean, bf16 output, tiled pass-through
    if kernels.lean_rmsnorm:
        notes.append(apply_lean_rmsnorm(model))
    if memory.bf16_residual:
        notes.append(apply_bf16_residual(model, compute_dtype or torch.float32))
    if kernels.tiled_mlp:
        notes.append(
            apply_tiled_mlp(model, kernels.tiled_mlp_tile, with_norm=kernels.tiled_mlp_norm)
        )
    if kernels.lean_lora_dropout:
        notes.append(apply_lean_lora_dropout(model))
    if memory.offload_activations:
        off = offloader or ActivationOffloader()
        if not (on_cuda or off.simulate):
            notes.append(f"activation offloading skipped: needs CUDA (model is on {device.type})")
        elif not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
            notes.append(
                "activation offloading skipped: needs gradient checkpointing enabled first"
            )
        else:
            n = off.install(model)
            state["offloader"] = off
            notes.append(f"activation offloading on ({n} checkpointed layers)")
    state["notes"] = notes
    setattr(model, _STATE_ATTR, state)
    return notes


def revert_kernels(model: nn.Module) -> None:
    """Undo :func:`apply_kernels` on ``model`` (a no-op when nothing is applied)."""
    state = model.__dict__.pop(_STATE_ATTR, None)
    if not state:
        return
    _uninstall_rope(state)
    revert_lean_lora_dropout(model)
    revert_tiled_mlp(model)  # the reverse order of apply_kernels
    revert_bf16_residual(model)
    revert_lean_rmsnorm(model)
    if state.get("offloader") is not None:
        ActivationOffloader.uninstall(model)


def applied_kernels(model: nn.Module) -> list[str]:
    """The notes of the kernels currently applied to ``model`` (empty when none)."""
    state = model.__dict__.get(_STATE_ATTR)
    return list(state["notes"]) if state else []
