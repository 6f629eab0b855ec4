"""Triton kernel for one block of cross-entropy rows: loss and d(loss)/d(logits), in place.

Used by :func:`longqa.ops.chunked_ce.chunked_linear_cross_entropy` with ``backend="triton"``::

    loss_rows = ce_loss_and_grad_inplace(logits, labels, scale, ignore_index)
    # logits [c, V] now hold (softmax(z) - onehot(label)) * scale (0 for ignored rows)

One program per row walks the vocabulary twice in ``BLOCK`` columns: an online max / sum-exp pass
(Milakov & Gimelshein, 2018, https://arxiv.org/abs/1805.02867) and a pass that writes the gradient
over the logits, so no second ``[c, V]`` buffer is allocated. Arithmetic is float32 for every input
dtype. Runs on CUDA, or on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from longqa.core.errors import LongqaError
from longqa.ops._triton_util import check_device, jit, next_pow2

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _ce_rows_kernel(
    logits_ptr,  # [R, V] row-major (last stride 1), overwritten with the gradient
    stride_row,
    labels_ptr,  # [R] int64
    loss_ptr,  # [R] float32 out: logsumexp(z) - z[label] (0 if ignored)
    scale_ptr,  # [] float32: gradient scale (1 / n_counted for a mean)
    n_cols,
    ignore_index,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    scale = tl.load(scale_ptr)
    if label == ignore_index:
        for off in range(0, n_cols, BLOCK):
            cols = off + tl.arange(0, BLOCK)  # [BLOCK]
            tl.store(base + cols, tl.zeros([BLOCK], dtype=tl.float32), mask=cols < n_cols)
        tl.store(loss_ptr + row, 0.0)
    else:
        m = float("-inf")  # running max
        d = 0.0  # running sum of exp(z - m)
        for off in range(0, n_cols, BLOCK):
            cols = off + tl.arange(0, BLOCK)  # [BLOCK]
            z = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(z, axis=0))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        z_label = tl.load(base + label).to(tl.float32)
        tl.store(loss_ptr + row, m + tl.log(d) - z_label)
        for off in range(0, n_cols, BLOCK):
            cols = off + tl.arange(0, BLOCK)  # [BLOCK]
            mask = cols < n_cols
            z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.exp(z - m) / d
            g = tl.where(cols == label, g - 1.0, g) * scale
            tl.store(base + cols, g, mask=mask)


def ce_loss_and_grad_inplace(
    logits: Tensor, labels: Tensor, scale: Tensor, ignore_index: int = -100
) -> Tensor:
    """Per-row loss ``[R]`` (float32); ``logits [R, V]`` is overwritten with the scaled gradient."""
    if logits.dtype not in SUPPORTED_DTYPES:
        raise LongqaError(
            f"Triton cross-entropy: dtype {logits.dtype} unsupported; supported: float32, "
            "bfloat16, float16"
        )
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise LongqaError("Triton cross-entropy: logits must be [R, V] with unit column stride")
    check_device("Triton cross-entropy", logits)
    n_rows, n_cols = logits.shape
    labels = labels.reshape(-1).to(torch.int64).contiguous()
    # NaN-filled so that a row the kernel failed to write can never pass as a loss
    loss = torch.full((n_rows,), float("nan"), dtype=torch.float32, device=logits.device)
    scale = scale.reshape(()).to(device=logits.device, dtype=torch.float32).contiguous()
    if n_rows == 0:
        return loss
    block = min(next_pow2(n_cols), 4096 if logits.is_cuda else 1024)
    kernel = jit(_ce_rows_kernel)
    kernel[(n_rows,)](
        logits, logits.stride(0), labels, loss, scale, n_cols, ignore_index, BLOCK=block
    )
    return loss
