"""Chunked linear cross-entropy: final hidden states + LM head -> loss, never N x V logits.

Usage::

    from longqa.ops.chunked_ce import chunked_linear_cross_entropy
    # hidden: [N, H] final hidden states (already shifted so that row i predicts labels[i])
    # weight: [V, H] LM head; labels: [N] int64 with ignore_index for non-assistant tokens
    loss = chunked_linear_cross_entropy(hidden, weight, labels, chunk_size=4096)
    loss.backward()

The rows are processed ``chunk_size`` at a time. For each chunk the forward pass computes the logits
``[chunk, V]``, the per-row loss ``logsumexp(z) - z[label]`` and, right away, the gradient of the mean
loss with respect to the logits (``softmax(z) - onehot(label)``, divided by the number of counted
tokens). That gradient is multiplied into ``grad_hidden = g @ W`` and ``grad_weight += g^T @ h``
before the next chunk, so peak extra memory is one ``[chunk, V]`` block instead of ``[N, V]``. The
backward pass only scales the stored gradients by ``grad_output``. This is the scheme of Liger-Kernel's
fused linear cross-entropy (Hsu et al., 2024, https://arxiv.org/abs/2410.10989).

Numerics: the softmax / log-sum-exp run in float32 whatever the input dtype; ``grad_weight`` is
accumulated across chunks in float32 and cast back to the weight dtype at the end. A frozen weight
(``requires_grad=False``, the LoRA case) gets no gradient and no accumulator.

Backends: ``"torch"`` (any device), ``"triton"`` (the per-row softmax / loss / logit-gradient runs in
the Triton kernel of :mod:`longqa.ops.ce_triton`, in place on the logits block; the matmuls stay in
torch) and ``"auto"`` (Triton on CUDA when triton imports, torch otherwise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longqa.core.errors import LongqaError

_BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in _BACKENDS:
        raise LongqaError(
            f"chunked cross-entropy backend {backend!r} unknown; expected one of {_BACKENDS}"
        )
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return backend


def _chunk_grad_torch(logits: Tensor, labels: Tensor, valid: Tensor, scale: Tensor) -> Tensor:
    """(loss rows [c] fp32, 0 where ignored; d loss / d logits [c, V] fp32, already scaled).

    The gradient is built in place in the fp32 logits (the block itself when the logits are fp32,
    which are not needed afterwards): one ``[c, V]`` block beside ``logsumexp``'s temporary,
    not three."""
    z = logits.float()  # [c, V]
    lse = torch.logsumexp(z, dim=-1)  # [c]
    tgt = labels.clamp(min=0).unsqueeze(1)  # [c, 1]
    loss_rows = (lse - z.gather(1, tgt).squeeze(1)) * valid  # [c]
    grad = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, [c, V], in place
    grad.scatter_add_(1, tgt, torch.full_like(tgt, -1.0, dtype=grad.dtype))
    grad.mul_((valid * scale).unsqueeze(1))  # zero rows for ignored labels
    return loss_rows, grad


def _chunk_loss_torch(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    return (lse - z.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)) * valid


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: Tensor,  # [N, H]
        weight: Tensor,  # [V, H]
        bias: Tensor | None,  # [V] or None
        labels: Tensor,  # [N]
        chunk_size: int,
        ignore_index: int,
        reduction: str,
        backend: str,
        want_grad: bool,
    ) -> Tensor:
        n_rows = hidden.shape[0]
        valid_all = labels != ignore_index  # [N]
        n_valid = valid_all.sum()
        if reduction == "mean":
            scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        else:
            scale = torch.ones((), dtype=torch.float32, device=hidden.device)
        need_h = want_grad and hidden.requires_grad
        need_w = want_grad and weight.requires_grad
        need_b = want_grad and bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if backend == "triton":
            from longqa.ops.ce_triton import ce_loss_and_grad_inplace

        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            h = hidden[start:end]  # [c, H]
            lab = labels[start:end]  # [c]
            valid = valid_all[start:end].to(torch.float32)  # [c]
            logits = h @ weight.t()  # [c, V], input dtype (tensor cores on GPU)
            if bias is not None:
                logits = logits + bias
            if not (need_h or need_w or need_b):
                total += _chunk_loss_torch(logits, lab, valid).sum()
                continue
            if backend == "triton":
                loss_rows = ce_loss_and_grad_inplace(logits, lab, scale, ignore_index)
                g = logits  # now holds d loss / d logits, [c, V]
            else:  # overwrites the logits block with its gradient
                loss_rows, g = _chunk_grad_torch(logits, lab, valid, scale)
            total += loss_rows.sum()
            g_lo = g.to(hidden.dtype)  # [c, V]
            if need_h:
                grad_h[start:end] = g_lo @ weight  # [c, H]
            if need_w:
                grad_w += (g_lo.t() @ h).float()  # [V, H], fp32 accumulation over chunks
            if need_b:
                grad_b += g.float().sum(0)
            del logits, g, g_lo

        ctx.save_for_backward(
            grad_h, grad_w.to(weight.dtype) if need_w else None, grad_b if need_b else None
        )
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        go = grad_output.float()
        out_h = out_w = out_b = None
        if grad_h is not None and ctx.needs_input_grad[0]:
            out_h = grad_h * go.to(grad_h.dtype)
        if grad_w is not None and ctx.needs_input_grad[1]:
            out_w = grad_w * go.to(grad_w.dtype)
        if grad_b is not None and ctx.needs_input_grad[2]:
            out_b = (grad_b * go).to(ctx.bias_dtype)
        return out_h, out_w, out_b, None, None, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    bias: Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels`` without full logits.

    Args:
        hidden: ``[N, H]`` (or ``[..., H]``, flattened) final hidden states, labels already shifted.
        weight: ``[V, H]`` LM head weight; frozen weights get no gradient.
        labels: ``[N]`` (or ``[...]``) class ids; ``ignore_index`` rows are not counted.
        chunk_size: rows per block; peak extra memory is about ``chunk_size * V * 4`` bytes.
        ignore_index: label value that is skipped (non-assistant tokens, padding).
        bias: optional ``[V]`` LM head bias.
        reduction: ``"mean"`` over counted tokens (0 when there are none) or ``"sum"``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see the module docstring).

    Returns:
        A float32 scalar loss, differentiable with respect to ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() < 2 or weight.dim() != 2:
        raise LongqaError(
            f"chunked cross-entropy: expected hidden [N, H] and weight [V, H], got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if hidden.shape[1] != weight.shape[1] or labels.shape[0] != hidden.shape[0]:
        raise LongqaError(
            f"chunked cross-entropy: shapes do not match: hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}, labels {tuple(labels.shape)} (want [N,H], [V,H], [N])"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise LongqaError(
            f"chunked cross-entropy: bias must be [V]={weight.shape[0]}, got {tuple(bias.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise LongqaError(f"chunked cross-entropy: labels must be int64/int32, got {labels.dtype}")
    if chunk_size < 1:
        raise LongqaError(f"chunked cross-entropy: chunk_size must be >= 1, got {chunk_size}")
    if reduction not in ("mean", "sum"):
        raise LongqaError(
            f"chunked cross-entropy: reduction must be 'mean' or 'sum', got {reduction!r}"
        )
    n_classes = weight.shape[0]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise LongqaError(
            f"chunked cross-entropy: label {value} outside [0, {n_classes}) and not ignore_index "
            f"({ignore_index})"
        )
    labels = labels.long()
    resolved = _resolve_backend(backend, hidden.device)
    if weight.dtype != hidden.dtype:
        weight_used = weight.to(hidden.dtype)  # autograd-tracked cast, e.g. fp32 head, bf16 hidden
    else:
        weight_used = weight
    return _ChunkedLinearCE.apply(
        hidden,
        weight_used,
        bias,
        labels,
        chunk_size,
        ignore_index,
        reduction,
        resolved,
        torch.is_grad_enabled(),
    )
