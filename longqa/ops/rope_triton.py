"""Fused rotary position embedding (RoPE) for q and k: one Triton launch, in place, with autograd.

Usage::

    from longqa.ops.rope_triton import fused_rope
    # q [B, Hq, S, D], k [B, Hk, S, D] (Hk divides Hq for GQA), last stride 1, any other strides
    # cos/sin [B or 1, S, D] (or [.., D/2]) already gathered per token, e.g. a HF rotary module's
    # output; or tables [P, D] plus position_ids [B, S] (packed sequences: positions restart)
    q, k = fused_rope(q, k, cos, sin)                     # rotates q and k in place
    q, k = fused_rope(q, k, cos_table, sin_table, position_ids=pos)

The rotation is the "rotate_half" form used by Llama / Qwen2 (Su et al., RoFormer,
https://arxiv.org/abs/2104.09864): with ``x = [x1, x2]`` split at ``D/2`` and ``c, s`` the first half
of ``cos, sin``: ``y1 = x1 c - x2 s``, ``y2 = x2 c + x1 s``. ``cos``/``sin`` may already carry a
scaling method's attention factor ``a`` (``a cos θ``, ``a sin θ``); the gradient is then
``a R(-θ) g``, i.e. the same kernel with ``s`` negated, which is what the backward pass launches.
Only the first half of a full-width ``cos``/``sin`` is read (Llama/Qwen2 duplicate the halves).
Arithmetic is float32 for every storage dtype. Runs on CUDA, or on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from longqa.core.errors import LongqaError
from longqa.ops._triton_util import check_device, jit, next_pow2

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256
MAX_HEADS = 256


def _rope_kernel(
    q_ptr,  # [B, Hq, S, D] source
    k_ptr,  # [B, Hk, S, D] source
    qo_ptr,  # [B, Hq, S, D] destination (may alias q_ptr)
    ko_ptr,  # [B, Hk, S, D] destination (may alias k_ptr)
    cos_ptr,  # [B|1, S, >=D/2] gathered, or [P, >=D/2] table when HAS_POS
    sin_ptr,  # same strides as cos
    pos_ptr,  # [B, S] int position ids (HAS_POS only)
    seq_len,
    q_sb, q_sh, q_ss,
    k_sb, k_sh, k_ss,
    qo_sb, qo_sh, qo_ss,
    ko_sb, ko_sh, ko_ss,
    c_sb, c_ss,
    p_sb, p_ss,
    n_qh,
    n_kh,
    half,
    SIGN: tl.constexpr,  # +1 forward, -1 backward (rotation by the negative angle)
    HAS_POS: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)  # one program per (batch, position) token
    b = tok // seq_len
    s = tok % seq_len
    if HAS_POS:
        row = tl.load(pos_ptr + b * p_sb + s * p_ss).to(tl.int64) * c_ss
    else:
        row = b * c_sb + s * c_ss
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_ok = d < half
    c = tl.load(cos_ptr + row + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]  # [1, BLOCK_D]
    sn = tl.load(sin_ptr + row + d, mask=d_ok, other=0.0).to(tl.float32)[None, :] * SIGN

    hq = tl.arange(0, BLOCK_QH)[:, None]  # [BLOCK_QH, 1]
    q_ok = (hq < n_qh) & d_ok[None, :]  # [BLOCK_QH, BLOCK_D]
    src = q_ptr + b * q_sb + s * q_ss + hq * q_sh + d[None, :]
    x1 = tl.load(src, mask=q_ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=q_ok, other=0.0).to(tl.float32)
    dst = qo_ptr + b * qo_sb + s * qo_ss + hq * qo_sh + d[None, :]
    tl.store(dst, x1 * c - x2 * sn, mask=q_ok)
    tl.store(dst + half, x2 * c + x1 * sn, mask=q_ok)

    hk = tl.arange(0, BLOCK_KH)[:, None]  # [BLOCK_KH, 1]
    k_ok = (hk < n_kh) & d_ok[None, :]  # [BLOCK_KH, BLOCK_D]
    src = k_ptr + b * k_sb + s * k_ss + hk * k_sh + d[None, :]
    x1 = tl.load(src, mask=k_ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=k_ok, other=0.0).to(tl.float32)
    dst = ko_ptr + b * ko_sb + s * ko_ss + hk * ko_sh + d[None, :]
    tl.store(dst, x1 * c - x2 * sn, mask=k_ok)
    tl.store(dst + half, x2 * c + x1 * sn, mask=k_ok)


def check_rope_inputs(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Raise :class:`LongqaError` naming what is supported when the kernel cannot take the input."""
    for name, t in (("q", q), ("k", k)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise LongqaError(
                f"fused RoPE: {name} dtype {t.dtype} unsupported; supported: float32, bfloat16, "
                "float16"
            )
        if t.dim() != 4:
            raise LongqaError(
                f"fused RoPE: {name} must be [batch, heads, seq, head_dim], got {tuple(t.shape)}"
            )
    if q.dtype != k.dtype:
        raise LongqaError(f"fused RoPE: q and k dtypes differ ({q.dtype} vs {k.dtype})")
    head_dim = q.shape[-1]
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise LongqaError(
            f"fused RoPE: head_dim {head_dim} unsupported; supported: even sizes from 2 to "
            f"{MAX_HEAD_DIM}"
        )
    bq, hq, sq, _ = q.shape
    bk, hk, sk, dk = k.shape
    if (bq, sq, head_dim) != (bk, sk, dk):
        raise LongqaError(f"fused RoPE: q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
    if hq > MAX_HEADS or hk > MAX_HEADS or hq % hk:
        raise LongqaError(
            f"fused RoPE: {hq} query / {hk} key heads unsupported; supported: at most {MAX_HEADS} "
            "heads, key heads dividing query heads"
        )
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise LongqaError("fused RoPE: q and k need a unit stride on head_dim (in-place update)")
    if cos.shape != sin.shape or cos.shape[-1] not in (head_dim, head_dim // 2):
        raise LongqaError(
            f"fused RoPE: cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must match and end in "
            f"head_dim ({head_dim}) or head_dim/2"
        )


def _rows(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q, k, q_out, k_out, cos, sin, position_ids, sign: float) -> None:
    b, n_qh, s, head_dim = q.shape
    n_kh = k.shape[1]
    cos, sin = _rows(cos), _rows(sin)
    if position_ids is not None:
        # tables [P, D]: row = position id
        cos2, sin2 = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
        if cos2.stride() != sin2.stride():
            cos2, sin2 = cos2.contiguous(), sin2.contiguous()
        c_sb, c_ss = 0, cos2.stride(0)
        pos = position_ids.expand(b, s)
        p_sb, p_ss = pos.stride()
    else:
        cos2, sin2 = cos, sin
        if cos2.dim() == 2:  # [S, D]: same for every batch row
            cos2, sin2 = cos2.unsqueeze(0), sin2.unsqueeze(0)
        if cos2.dim() != 3 or cos2.shape[1] != s or cos2.shape[0] not in (1, b):
            raise LongqaError(f"fused RoPE: cos {tuple(cos.shape)} must be [batch or 1, {s}, D]")
        if cos2.stride() != sin2.stride():
            cos2, sin2 = cos2.contiguous(), sin2.contiguous()
        c_sb = cos2.stride(0) if cos2.shape[0] > 1 else 0
        c_ss = cos2.stride(1)
        pos, p_sb, p_ss = cos2, 0, 0  # unused pointer
    if b * s == 0:
        return
    half = head_dim // 2
    jit(_rope_kernel)[(b * s,)](
        q, k, q_out, k_out, cos2, sin2, pos, s,
        *q.stride()[:3], *k.stride()[:3], *q_out.stride()[:3], *k_out.stride()[:3],
        c_sb, c_ss, p_sb, p_ss, n_qh, n_kh, half,
        SIGN=sign, HAS_POS=position_ids is not None,
        BLOCK_QH=next_pow2(n_qh), BLOCK_KH=next_pow2(n_kh), BLOCK_D=next_pow2(half),
    )  # fmt: skip


class FusedRope(torch.autograd.Function):
    """Autograd wrapper: forward rotates q, k in place; backward rotates the gradients back."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids=None):  # type: ignore[override]
        _launch(q, k, q, k, cos, sin, position_ids, 1.0)
        # q, k are usually views (HF: proj(x).view(...).transpose(1, 2)); autograd's mark_dirty
        # refuses views for a two-output Function, so bump their version counters instead: an op
        # that saved the un-rotated q or k for its own backward then fails loudly, never silently.
        torch.autograd.graph.increment_version((q, k))
        ctx.save_for_backward(cos, sin, position_ids)
        return q, k

    @staticmethod
    def backward(ctx, dq, dk):  # type: ignore[override]
        cos, sin, position_ids = ctx.saved_tensors
        dq_out = torch.empty(dq.shape, dtype=dq.dtype, device=dq.device)
        dk_out = torch.empty(dk.shape, dtype=dk.dtype, device=dk.device)
        _launch(dq, dk, dq_out, dk_out, cos, sin, position_ids, -1.0)
        return dq_out, dk_out, None, None, None


def fused_rope(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rotate ``q [B, Hq, S, D]`` and ``k [B, Hk, S, D]`` in place; returns ``(q, k)``.

    ``cos``/``sin``: ``[B|1, S, D or D/2]`` (or ``[S, ...]``) per token, or with ``position_ids
    [B, S]`` tables ``[P, D or D/2]`` indexed by position. ``cos``/``sin`` get no gradient.
    """
    check_rope_inputs(q, k, cos, sin)
    check_device("fused RoPE", q, k, cos, sin)
    if position_ids is not None:
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        if position_ids.dim() != 2 or position_ids.shape[-1] != q.shape[2]:
            raise LongqaError(
                f"fused RoPE: position_ids {tuple(position_ids.shape)} must be [batch, {q.shape[2]}]"
            )
    return FusedRope.apply(q, k, cos, sin, position_ids)


def rope_reference(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Out-of-place pure-torch RoPE with the same conventions as :func:`fused_rope`."""
    half = q.shape[-1] // 2
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]  # [B, S, D]
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    c = cos[..., :half].unsqueeze(1).float()  # [B, 1, S, D/2]
    s = sin[..., :half].unsqueeze(1).float()

    def rot(x: Tensor) -> Tensor:
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)

    return rot(q), rot(k)
