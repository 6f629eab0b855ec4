"""Log-n attention scaling of original Qwen (Qwen-7B/14B ``use_logn_attn``), as a reversible patch.

Original Qwen's ``modeling_qwen.py`` multiplies each query, after the rotary embedding and only at
inference (``not self.training``), by ``logn[i] = log(i) / log(seq_length)`` for ``i > seq_length``
and 1 otherwise, where ``i`` is the 1-based position of the query and ``seq_length`` the trained
window: attention entropy stays level when the context grows past the window (Chiang & Cholak,
"Overcoming a Theoretical Limitation of Self-Attention", arXiv:2202.12172). Together with its
dynamic NTK (``--rope dynamic-ntk --rope-ntk-variant qwen``) this reproduces the long-context behaviour of
the released Qwen-7B/14B checkpoints.

Usage (normally through the RoPE spec: ``rope: {method: dynamic-ntk, ntk_variant: qwen, logn: true}``
or ``--rope-logn``, which :func:`longqa.patch.rope.apply_rope_scaling` routes here)::

    from longqa.patch.logn import apply_logn_attention, revert_logn_attention
    apply_logn_attention(model, rotary)      # rotary: the model's LongqaRotaryEmbedding
    revert_logn_attention(model)             # hooks removed, logits bit-exact again

A per-position factor commutes with the rotation, so the query is scaled at the output of each
attention's ``q_proj`` (a forward hook); the factors come from the position ids the rotary module
sees, so a packed row (positions restarting per sample) scales each sample by its own positions.
When a LoRA wrapper replaces ``q_proj`` after patching, the hook moves to the wrapper on the next
forward, so the adapter's part of the query is scaled too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def logn_factors(position_ids: Tensor, original_length: int) -> Tensor:
    """``log(i) / log(L0)`` for 1-based positions ``i = p + 1 > L0``, else 1 → float32 ``[B, T, 1]``."""
    i = (position_ids + 1).to(torch.float32)
    scale = torch.where(i > original_length, torch.log(i) / math.log(original_length), 1.0)
    return scale[..., None]


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m for _, m in model.named_modules() if isinstance(getattr(m, "q_proj", None), nn.Module)
    ]


class _LognHooks:
    """The hooks of one attention module: a pre-hook that keeps the output hook on ``q_proj``."""

    def __init__(self, attn: nn.Module, rotary: Any) -> None:
        self.attn, self.rotary = attn, rotary
        self.q_proj: nn.Module | None = None
        self.q_handle: Any = None
        self.pre_handle = attn.register_forward_pre_hook(self._follow_q_proj)
        self._follow_q_proj(attn, ())

    def _follow_q_proj(self, attn: nn.Module, args: Any) -> None:
        if attn.q_proj is not self.q_proj:
            if self.q_handle is not None:
                self.q_handle.remove()
            self.q_proj = attn.q_proj
            self.q_handle = attn.q_proj.register_forward_hook(self._scale_query)

    def _scale_query(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        factors = self.rotary.logn_factors
        if module.training or factors is None:
            return output  # original Qwen applies log-n only at inference
        if factors.shape[:2] != output.shape[:2]:
            factors = factors.expand(output.shape[0], -1, -1)
        return output * factors.to(device=output.device, dtype=output.dtype)

    def remove(self) -> None:
        self.pre_handle.remove()
        if self.q_handle is not None:
            self.q_handle.remove()


def apply_logn_attention(model: nn.Module, rotary: Any) -> int:
    """Scale every attention's queries by log-n from ``rotary``'s positions; returns how many
    attention modules were hooked. ``rotary`` is a ``LongqaRotaryEmbedding`` (it computes
    ``logn_factors`` from the position ids of each forward)."""
    from longqa.core.errors import LongqaError

    revert_logn_attention(model)
    attentions = _attention_modules(model)
    if any(hasattr(a, "q_norm") for a in attentions):
        raise LongqaError(
            "log-n attention scales q_proj's output, which this model's query norm (q_norm) "
            "would undo; it is meant for original Qwen (converted to Qwen2) and Llama-like models"
        )
    hooks = [_LognHooks(attn, rotary) for attn in attentions]
    rotary.logn_hooks = hooks
    rotary.logn_enabled = True
    return len(hooks)


def revert_logn_attention(model: nn.Module) -> nn.Module:
    """Remove the log-n hooks from ``model`` (no-op when there are none)."""
    for module in model.modules():
        hooks = getattr(module, "logn_hooks", None)
        if hooks:
            for h in hooks:
                h.remove()
            module.logn_hooks = []
            module.logn_enabled = False
            module.logn_factors = None
    return model
