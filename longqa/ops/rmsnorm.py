"""RMSNorm that keeps its input and ``1/rms`` for backward, not the fp32 normalised values.

Usage::

    from longqa.ops.rmsnorm import lean_rms_norm
    y = lean_rms_norm(x, norm.weight, norm.variance_epsilon)   # == LlamaRMSNorm.forward(x)

The RMSNorm of Llama / Qwen2 / Qwen3 / Mistral in transformers computes, in fp32,
``n = x · rsqrt(mean(x²) + eps)`` and returns ``weight · n.to(x.dtype)``. Run by autograd, that
graph saves ``n`` (``[B, T, H]`` fp32, for the weight's gradient) beside ``x`` and ``1/rms``
(``[B, T, 1]``). In a checkpointed decoder layer whose norms are trained (QLoRA with
``lora.trainable_norms``; ``prepare_model_for_kbit_training`` keeps them in fp32) that is ``4·H``
bytes per token per norm in the recompute working set, twice a layer (measured in
``benchmarks/results/layer_memory.md``). This autograd function computes the same forward with the
same operations in the same order (so the output is bitwise identical) and saves only ``x``, the
weight and ``1/rms``: ``x`` is kept anyway (the layer's stored input, or the residual the layer adds
back), and ``n`` is recomputed in backward. The backward applies the chain rule of the same graph
(``weight · n`` → cast → ``h · rstd`` → ``rsqrt(mean(h²) + eps)``), in the same dtypes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _LeanRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        h = x.to(torch.float32)  # [..., H]
        rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        ctx.save_for_backward(x, weight, rstd)
        return weight * (h * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]  # noqa: ANN205
        # in-place where the tensor is this function's own, so at most two [..., H] temporaries
        # are alive beside the incoming gradient (the unpatched graph's backward holds as many)
        x, weight, rstd = ctx.saved_tensors
        h = x.to(torch.float32)
        grad_w = None
        if ctx.needs_input_grad[1]:
            n = (h * rstd).to(x.dtype)  # recomputed, [..., H]
            grad_w = (grad * n).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype)
            del n
        if not ctx.needs_input_grad[0]:
            return None, grad_w, None
        # d n via the cast to x.dtype: a new tensor, written in place below
        dn = (grad * weight).to(x.dtype).to(torch.float32)
        d_rstd = (dn * h).sum(-1, keepdim=True)  # [..., 1]
        d_var = -0.5 * d_rstd * rstd.pow(3)  # rsqrt'(v) = -1/2 · rsqrt(v)³
        dh = dn.mul_(rstd).add_(h * (d_var * (2 / h.shape[-1])))  # via h · rstd, and via mean(h²)
        return dh.to(x.dtype), grad_w, None


def lean_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight · (x · rsqrt(mean(x²) + eps)).to(x.dtype)`` (fp32 inside), saving ``x`` and ``1/rms``."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        h = x.to(torch.float32)
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return _LeanRMSNorm.apply(x, weight, eps)
