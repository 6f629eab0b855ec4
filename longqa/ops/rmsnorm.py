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
(``weight · n`` → cast → ``h · rstd`` → ``rsqrt(mean(h²) + eps)``), in the same dtypes. Forward
and backward run over :data:`BACKWARD_CHUNK` tokens at a time (RMSNorm acts per token), so their
fp32 temporaries do not grow with the sequence: with a bf16 input they would be twice its size.
``out_dtype`` casts the output inside the function (``memory.bf16_residual``: a fp32 weight times
bf16 values gives fp32), so the incoming gradient stays in that dtype too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

BACKWARD_CHUNK = 2048  # tokens per piece of forward and backward (fp32 temporaries are O(chunk))


def _forward(
    x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None
) -> tuple[Tensor, Tensor]:
    """``(y, rstd)`` computed over :data:`BACKWARD_CHUNK` tokens at a time (fp32 temporaries
    O(chunk)), each piece with transformers' operations in transformers' order."""
    size = x.shape[-1]
    x2 = x.reshape(-1, size)  # [N, H]
    dtype = out_dtype or torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty(x2.shape, dtype=dtype, device=x.device)  # [N, H]
    rstd = torch.empty(x2.shape[0], 1, dtype=torch.float32, device=x.device)  # [N, 1]
    for a in range(0, x2.shape[0], BACKWARD_CHUNK):
        b = a + BACKWARD_CHUNK
        h = x2[a:b].to(torch.float32)  # [n, H]
        rstd[a:b] = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        y[a:b] = weight * (h * rstd[a:b]).to(x.dtype)
    return y.view(*x.shape[:-1], size), rstd.view(*x.shape[:-1], 1)


class _LeanRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None):  # type: ignore[override]  # noqa: ANN205
        y, rstd = _forward(x, weight, eps, out_dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]  # noqa: ANN205
        # the chain rule of the forward's graph, over BACKWARD_CHUNK tokens at a time: its fp32
        # temporaries are O(chunk), only the input's gradient is as long as the sequence
        x, weight, rstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        size = x.shape[-1]
        prod = torch.promote_types(weight.dtype, x.dtype)  # dtype of weight · n (before a cast)
        x2, g2, r2 = x.reshape(-1, size), grad.reshape(-1, size), rstd.reshape(-1, 1)
        dx = torch.empty_like(x2) if need_x else None  # [N, H]
        gw = torch.zeros(size, dtype=prod, device=x.device) if need_w else None  # [H]
        for a in range(0, x2.shape[0], BACKWARD_CHUNK):
            b = a + BACKWARD_CHUNK
            h, rs, g = x2[a:b].to(torch.float32), r2[a:b], g2[a:b].to(prod)  # [n, H], [n, 1]
            if gw is not None:
                gw += (g * (h * rs).to(x.dtype)).sum(0)  # recomputed n
            if dx is not None:
                dn = (g * weight).to(x.dtype).to(torch.float32)  # d n, via the cast to x.dtype
                d_rstd = (dn * h).sum(-1, keepdim=True)  # [n, 1]
                d_var = -0.5 * d_rstd * rs.pow(3)  # rsqrt'(v) = -1/2 · rsqrt(v)³
                # via h · rstd, and via mean(h²); in place on this function's own tensor
                dx[a:b] = dn.mul_(rs).add_(h * (d_var * (2 / size)))
        grad_x = dx.view(x.shape) if dx is not None else None
        grad_w = gw.to(weight.dtype) if gw is not None else None
        return grad_x, grad_w, None, None


def lean_rms_norm(
    x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None
) -> Tensor:
    """``weight · (x · rsqrt(mean(x²) + eps)).to(x.dtype)`` (fp32 inside), saving ``x`` and
    ``1/rms``; cast to ``out_dtype`` when given (the bf16 residual stream's norms)."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _forward(x, weight, eps, out_dtype)[0]
    return _LeanRMSNorm.apply(x, weight, eps, out_dtype)
