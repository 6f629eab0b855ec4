"""Switch the recipe's kernels and memory features on a loaded HF model, reversibly.

Usage::

    from longqa.patch.kernels import apply_kernels, revert_kernels
    model.activation_checkpointing_enable()        # first: offloading wraps its checkpoint function
    notes = apply_kernels(model, recipe.kernels, recipe.memory)   # e.g. ["fused RoPE on (16 layers)"]
    revert_kernels(model)                          # back to the unpatched model

* ``kernels.rope``: :func:`longqa.patch.fused_rope.apply_fused_rope` rotates q and k of every
  supported attention layer with :func:`longqa.ops.rope_triton.fused_rope`, through the hub-kernel
  slot transformers >= 5.25 gives each attention instance, or by swapping the modeling file's
  function while a patched attention runs (other models untouched). Library source is never edited.
  Needs CUDA (or ``force_triton=True`` with ``TRITON_INTERPRET=1``, used by the tests).
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

from typing import Any

import torch
from torch import nn

from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.ops.offload import ActivationOffloader
from longqa.patch.fused_rope import apply_fused_rope, revert_fused_rope
from longqa.patch.lora_dropout import apply_lean_lora_dropout, revert_lean_lora_dropout
from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

_STATE_ATTR = "_longqa_kernels"


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


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
    state: dict[str, Any] = {"rope": {}, "offloader": None, "notes": []}
    notes: list[str] = []
    if kernels.rope:
        if on_cuda or force_triton:
            state["rope"] = apply_fused_rope(model)
            notes.append(state["rope"]["note"])
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
    revert_fused_rope(state["rope"])
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
