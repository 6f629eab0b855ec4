"""Fused Triton RoPE (CPU interpreter) vs. transformers' eager ``apply_rotary_pos_emb``."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the CPU interpreter here

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longqa.core.errors import LongqaError
from longqa.ops.rope_triton import _launch, fused_rope, rope_reference

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-2, atol=2e-2),
    torch.float16: dict(rtol=1e-2, atol=5e-3),
}


def _tables(n_pos: int, head_dim: int, attention_factor: float = 1.3):
    """HF-style cos/sin tables [P, D] (duplicated halves) carrying an attention factor."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(n_pos).float()[:, None] * inv_freq  # [P, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [P, D]
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def _qk(b, s, hq, hk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # HF layout: projections [B, S, H*D] viewed [B, S, H, D] and transposed -> strided [B, H, S, D]
    q = torch.randn(b, s, hq, d, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(b, s, hk, d, generator=g).to(dtype).transpose(1, 2)
    return q.detach().requires_grad_(True), k.detach().requires_grad_(True)


def _positions(b, s, seed=1):
    g = torch.Generator().manual_seed(seed)
    # packed sequences: positions restart inside a row; a strided slice -> non-contiguous ids
    full = torch.cat([torch.arange(40), torch.arange(2 * s)])[: 2 * s].repeat(b, 1)
    full = full + torch.randint(0, 5, (b, 1), generator=g)
    return full[:, ::2]


@pytest.mark.parametrize(
    ("hq", "hk", "dtype"),
    [(5, 5, torch.float32), (6, 2, torch.float32), (6, 2, torch.bfloat16), (4, 1, torch.float16)],
)
def test_forward_and_backward_match_transformers(hq, hk, dtype):
    b, s, d = 3, 73, 64
    pos = _positions(b, s)
    assert not pos.is_contiguous()
    cos_t, sin_t = _tables(int(pos.max()) + 1, d)
    cos, sin = cos_t[pos].to(dtype), sin_t[pos].to(dtype)  # [B, S, D] as HF's rotary module gives
    q0, k0 = _qk(b, s, hq, hk, d, dtype)
    q_ref, k_ref = apply_rotary_pos_emb(q0.float(), k0.float(), cos.float(), sin.float())
    q_in, k_in = q0 * 1, k0 * 1  # non-leaf, same strided layout, so the update can be in place
    q_out, k_out = fused_rope(q_in, k_in, cos, sin)
    assert q_out.data_ptr() == q_in.data_ptr() and k_out.data_ptr() == k_in.data_ptr()
    torch.testing.assert_close(q_out.float(), q_ref, **TOL[dtype])
    torch.testing.assert_close(k_out.float(), k_ref, **TOL[dtype])

    gq, gk = torch.randn_like(q_ref), torch.randn_like(k_ref)
    dq, dk = torch.autograd.grad((q_out.float() * gq).sum() + (k_out.float() * gk).sum(), [q0, k0])
    qf, kf = q0.detach().float().requires_grad_(), k0.detach().float().requires_grad_()
    q_r, k_r = apply_rotary_pos_emb(qf, kf, cos.float(), sin.float())
    dq_ref, dk_ref = torch.autograd.grad((q_r * gq).sum() + (k_r * gk).sum(), [qf, kf])
    torch.testing.assert_close(dq.float(), dq_ref, **TOL[dtype])
    torch.testing.assert_close(dk.float(), dk_ref, **TOL[dtype])


def test_position_id_tables_equal_gathered_cos_sin():
    b, s, hq, hk, d = 2, 37, 4, 2, 32
    pos = _positions(b, s, seed=3)
    cos_t, sin_t = _tables(int(pos.max()) + 1, d)
    q0, k0 = _qk(b, s, hq, hk, d, torch.float32, seed=4)
    q1, k1 = fused_rope(q0.detach().clone(), k0.detach().clone(), cos_t, sin_t, position_ids=pos)
    half = d // 2  # half-width tables are accepted too
    q2, k2 = fused_rope(
        q0.detach().clone(), k0.detach().clone(), cos_t[pos][..., :half], sin_t[pos][..., :half]
    )
    q_ref, k_ref = rope_reference(q0.detach(), k0.detach(), cos_t, sin_t, position_ids=pos)
    torch.testing.assert_close(q1, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k1, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q2, q1, rtol=0, atol=0)
    torch.testing.assert_close(k2, k1, rtol=0, atol=0)


def test_poisoned_outputs_are_fully_written_and_backward_is_inverse_rotation():
    b, s, hq, hk, d, factor = 1, 19, 3, 3, 48, 1.25  # 48/2 = 24: padded lanes in the kernel
    pos = torch.arange(s).unsqueeze(0)
    cos_t, sin_t = _tables(s, d, attention_factor=factor)
    q, k = (t.detach().contiguous() for t in _qk(b, s, hq, hk, d, torch.float32, seed=5))
    q_out, k_out = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    _launch(q, k, q_out, k_out, cos_t, sin_t, pos, 1.0)
    q_ref, k_ref = rope_reference(q, k, cos_t, sin_t, position_ids=pos)
    torch.testing.assert_close(q_out, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_out, k_ref, rtol=1e-5, atol=1e-5)
    back_q, back_k = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    _launch(q_out, k_out, back_q, back_k, cos_t, sin_t, pos, -1.0)
    # R(-θ) a R(θ) a x = a² x: the backward rotation undoes the forward one up to the factor²
    torch.testing.assert_close(back_q, q * factor**2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back_k, k * factor**2, rtol=1e-5, atol=1e-5)


def test_views_are_rotated_in_place_and_stale_saved_inputs_fail_loudly():
    b, s, h, d = 1, 6, 2, 8
    cos_t, sin_t = _tables(s, d)
    base = torch.randn(b, s, 2 * h * d, requires_grad=True) * 1  # like a fused projection output
    q = base[..., : h * d].view(b, s, h, d).transpose(1, 2)  # HF layout: strided views
    k = base[..., h * d :].view(b, s, h, d).transpose(1, 2)
    q_ref, k_ref = rope_reference(q.detach(), k.detach(), cos_t, sin_t)
    stale = base.square()  # saves the un-rotated values for its backward
    q_out, k_out = fused_rope(q, k, cos_t, sin_t)
    assert q_out.data_ptr() == q.data_ptr()
    torch.testing.assert_close(q.detach(), q_ref, rtol=1e-5, atol=1e-5)  # storage changed
    torch.testing.assert_close(k_out.detach(), k_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.sum().backward()


def test_unsupported_inputs_name_what_is_supported(monkeypatch):
    cos, sin = _tables(8, 8)
    q, k = torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8)
    with pytest.raises(LongqaError, match="dtype torch.float64 unsupported; supported: float32"):
        fused_rope(q.double(), k.double(), cos, sin)
    odd = torch.zeros(1, 2, 8, 7)
    with pytest.raises(LongqaError, match="head_dim 7 unsupported; supported: even sizes"):
        fused_rope(odd, odd, cos[:, :7], sin[:, :7])
    big = torch.zeros(1, 1, 2, 512)
    with pytest.raises(LongqaError, match="head_dim 512 unsupported.*256"):
        fused_rope(big, big, torch.zeros(2, 512), torch.zeros(2, 512))
    with pytest.raises(LongqaError, match="key heads dividing query heads"):
        fused_rope(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8), cos, sin)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(LongqaError, match="needs CUDA tensors"):
        fused_rope(q, k, cos, sin)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_transformers(monkeypatch, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    b, s, hq, hk, d = 2, 1000, 32, 8, 128
    pos = _positions(b, s).cuda()
    cos_t, sin_t = _tables(int(pos.max()) + 1, d)
    cos, sin = cos_t.cuda()[pos].to(dtype), sin_t.cuda()[pos].to(dtype)
    q0, k0 = (t.detach().cuda().requires_grad_() for t in _qk(b, s, hq, hk, d, dtype))
    q_ref, k_ref = apply_rotary_pos_emb(q0.float(), k0.float(), cos.float(), sin.float())
    q_out, k_out = fused_rope(q0 * 1, k0 * 1, cos, sin)
    torch.testing.assert_close(q_out.float(), q_ref, **TOL[dtype])
    torch.testing.assert_close(k_out.float(), k_ref, **TOL[dtype])
    (q_out.float().sum() + k_out.float().square().sum()).backward()
    qf, kf = q0.detach().float().requires_grad_(), k0.detach().float().requires_grad_()
    q_r, k_r = apply_rotary_pos_emb(qf, kf, cos.float(), sin.float())
    (q_r.sum() + k_r.square().sum()).backward()
    torch.testing.assert_close(q0.grad.float(), qf.grad, **TOL[dtype])
    torch.testing.assert_close(k0.grad.float(), kf.grad, **TOL[dtype])
