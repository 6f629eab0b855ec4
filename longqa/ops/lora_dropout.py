"""LoRA's ``A(dropout(x))`` saving ``x`` and a bit-packed mask, not the dropped-out copy.

Usage::

    from longqa.ops.lora_dropout import dropout_linear
    h = dropout_linear(x, lora_A.weight, p=0.1, training=True)   # == lora_A(dropout(x)) in law

peft computes ``lora_B(lora_A(dropout(x)))``: autograd keeps, per adapted linear, the dropout's
output (for ``lora_A``'s weight gradient; a bf16 copy of it under autocast) and its bool mask, 3
bytes per input value. q, k and v read the same ``x`` yet keep three such copies, and ``o_proj``'s
input is already kept by SDPA. This function draws the same Bernoulli(1 − p) mask (scaled by
1 / (1 − p), as ``torch.nn.functional.dropout``), computes ``(x · mask · scale) Aᵀ`` under the
ambient autocast, and saves ``x`` itself (one storage shared by every caller with the same input)
and the mask packed 8 values to a byte: 1/8 byte per value. The backward rebuilds ``x · mask ·
scale`` to form ``A``'s gradient. Forward and backward run over :data:`CHUNK` tokens at a time, so
their full-precision temporaries do not grow with the sequence. Masks come from torch's
generator, so activation checkpointing (which restores the RNG state) redraws the same ones in the
recompute; they are a different draw from the one ``nn.Dropout`` would make, not a different law.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: Tensor) -> Tensor:
    """``[..., H]`` bool → ``[..., H/8]`` uint8 (``H`` a multiple of 8)."""
    bits = _BITS.to(mask.device)
    return (mask.view(*mask.shape[:-1], -1, 8).to(torch.uint8) * bits).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: Tensor) -> Tensor:
    """Inverse of :func:`pack_mask`: ``[..., H/8]`` uint8 → ``[..., H]`` bool."""
    bits = _BITS.to(packed.device)
    return (packed.unsqueeze(-1) & bits).ne(0).flatten(-2)


def draw_mask(x: Tensor, p: float) -> Tensor:
    """The keep-mask of dropout with probability ``p``: bool, ``x``'s shape, from torch's RNG."""
    return torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)


CHUNK = 2048  # tokens per piece of forward and backward: their temporaries are O(piece)


class _DropoutLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, p: float) -> Tensor:  # type: ignore[override]  # noqa: ANN205
        # x: [..., H], weight: [r, H] -> [..., r]
        scale = 1.0 / (1.0 - p)
        packed = x.shape[-1] % 8 == 0
        mask = draw_mask(x, p)  # [..., H] bool, the whole draw at once (one RNG call)
        saved = pack_mask(mask) if packed else mask
        del mask
        x2, m2 = x.reshape(-1, x.shape[-1]), saved.reshape(-1, saved.shape[-1])
        pieces = []
        for a in range(0, x2.shape[0], CHUNK):
            m = unpack_mask(m2[a : a + CHUNK]) if packed else m2[a : a + CHUNK]
            pieces.append(F.linear(x2[a : a + CHUNK] * m * scale, weight))  # autocast applies
        y = torch.cat(pieces).view(*x.shape[:-1], weight.shape[0])
        ctx.save_for_backward(x, weight, saved)
        ctx.packed, ctx.scale, ctx.compute = packed, scale, y.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]  # noqa: ANN205
        x, weight, saved = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        size = x.shape[-1]
        x2, m2 = x.reshape(-1, size), saved.reshape(-1, saved.shape[-1])
        g2 = grad.reshape(-1, grad.shape[-1]).to(ctx.compute)  # [N, r], the matmul's dtype
        w = weight.to(ctx.compute)  # [r, H]
        grad_x = torch.empty_like(x2) if need_x else None  # [N, H]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        for a in range(0, x2.shape[0], CHUNK):
            b = a + CHUNK
            m = unpack_mask(m2[a:b]) if ctx.packed else m2[a:b]  # [n, H] bool
            if grad_x is not None:  # as dropout's backward after the matmul's, in x's dtype
                grad_x[a:b] = (g2[a:b] @ w).to(x.dtype).mul_(m).mul_(ctx.scale)
            if grad_w is not None:  # A's gradient from the dropped-out input, rebuilt
                xd = (x2[a:b] * m).mul_(ctx.scale).to(ctx.compute)
                grad_w += (g2[a:b].T @ xd).float()
        return (
            grad_x.view(x.shape) if grad_x is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            None,
        )


def dropout_linear(x: Tensor, weight: Tensor, p: float, training: bool) -> Tensor:
    """``F.linear(F.dropout(x, p, training), weight)`` saving ``x`` and a packed mask."""
    if not training or p == 0.0:
        return F.linear(x, weight)
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x * draw_mask(x, p) * (1.0 / (1.0 - p)), weight)
    return _DropoutLinear.apply(x, weight, p)
