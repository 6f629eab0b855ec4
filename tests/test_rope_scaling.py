"""RoPE scaling math vs transformers' ROPE_INIT_FUNCTIONS and independently written formulas."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import TINY_SHAPE
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.ops.rope_scaling import (
    available_methods,
    check_params,
    compute_rope,
    is_dynamic,
    rope_report,
)

HEAD_DIM = 16
L0 = 64


def _hf_config(rope_parameters: dict, max_pos: int = L0) -> LlamaConfig:
    return LlamaConfig(
        **{**TINY_SHAPE, "num_hidden_layers": 1},
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )


def _ours(method: str, model_base: float = 10000.0, seq_len: int | None = None, **kw):
    params = RopeConfig(method=method, **kw).model_dump()
    return compute_rope(
        params,
        head_dim=HEAD_DIM,
        base=model_base,
        original_max_position_embeddings=L0,
        seq_len=seq_len,
    )


def _plain(base: float, d: int = HEAD_DIM) -> torch.Tensor:
    return torch.tensor([1.0 / base ** (2 * i / d) for i in range(d // 2)], dtype=torch.float64)


def test_registry_lists_all_methods():
    assert available_methods() == [
        "none",
        "linear",
        "ntk",
        "dynamic-ntk",
        "yarn",
        "dynamic-yarn",
        "llama3",
        "abf",
    ]
    assert [m for m in available_methods() if is_dynamic(m)] == ["dynamic-ntk", "dynamic-yarn"]


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_linear_matches_transformers(factor):
    cfg = _hf_config({"rope_type": "linear", "factor": factor, "rope_theta": 10000.0})
    ref, ref_attn = ROPE_INIT_FUNCTIONS["linear"](cfg, None)
    inv, attn = _ours("linear", factor=factor)
    assert inv.dtype == torch.float32 and inv.shape == (HEAD_DIM // 2,)
    torch.testing.assert_close(inv, ref, rtol=0, atol=0)
    assert attn == ref_attn == 1.0


@pytest.mark.parametrize(("factor", "base"), [(4.0, 10000.0), (2.5, 1e6), (32.0, 5e5)])
def test_yarn_matches_transformers(factor, base):
    cfg = _hf_config(
        {
            "rope_type": "yarn",
            "factor": factor,
            "rope_theta": base,
            "original_max_position_embeddings": L0,
        },
        max_pos=int(L0 * factor),
    )
    ref, ref_attn = ROPE_INIT_FUNCTIONS["yarn"](cfg, None)
    inv, attn = _ours("yarn", model_base=base, factor=factor)
    torch.testing.assert_close(inv, ref, rtol=0, atol=0)
    assert attn == pytest.approx(ref_attn, abs=1e-12)
    assert attn == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.parametrize(("factor", "low", "high"), [(8.0, 1.0, 4.0), (4.0, 2.0, 8.0)])
def test_llama3_matches_transformers(factor, low, high):
    cfg = _hf_config(
        {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "rope_theta": 500000.0,
            "original_max_position_embeddings": L0,
        },
        max_pos=int(L0 * factor),
    )
    ref, ref_attn = ROPE_INIT_FUNCTIONS["llama3"](cfg, None)
    inv, attn = _ours(
        "llama3", model_base=500000.0, factor=factor, low_freq_factor=low, high_freq_factor=high
    )
    torch.testing.assert_close(inv, ref, rtol=0, atol=0)
    assert attn == ref_attn == 1.0
    # the three regimes all occur: kept (high freq), divided by s (low freq) and smoothed between
    ratio = (_plain(500000.0) / inv.double()).tolist()
    assert ratio[0] == pytest.approx(1.0) and ratio[-1] == pytest.approx(factor, rel=1e-5)


@pytest.mark.parametrize("seq_len", [None, 10, 64, 100, 1000])
def test_dynamic_ntk_hf_matches_transformers(seq_len):
    cfg = _hf_config({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    ref, ref_attn = ROPE_INIT_FUNCTIONS["dynamic"](cfg, None, seq_len=seq_len)
    inv, attn = _ours("dynamic-ntk", factor=2.0, seq_len=seq_len)
    torch.testing.assert_close(inv, ref, rtol=0, atol=0)
    assert attn == ref_attn == 1.0


@pytest.mark.parametrize(("seq_len", "alpha"), [(None, 1), (64, 1), (65, 3), (128, 3), (129, 7)])
def test_dynamic_ntk_qwen_formula(seq_len, alpha):
    # Qwen: alpha = 2^ceil(log2(L/L0) + 1) - 1, at least 1 (L = L0 when unknown)
    length = seq_len or L0
    expected_alpha = max(2 ** math.ceil(math.log2(length / L0) + 1) - 1, 1)
    assert expected_alpha == alpha
    inv, attn = _ours("dynamic-ntk", ntk_variant="qwen", seq_len=seq_len)
    new_base = 10000.0 * alpha ** (HEAD_DIM / (HEAD_DIM - 2))
    torch.testing.assert_close(inv.double(), _plain(new_base), rtol=1e-6, atol=0)
    assert attn == 1.0


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_static_ntk_formula(factor):
    inv, attn = _ours("ntk", factor=factor)
    new_base = 10000.0 * factor ** (HEAD_DIM / (HEAD_DIM - 2))
    torch.testing.assert_close(inv.double(), _plain(new_base), rtol=1e-6, atol=0)
    assert attn == 1.0
    assert inv[0] == 1.0 and inv[-1] < _plain(10000.0)[-1]  # lowest frequency slowed


def test_abf_formula_and_model_base_ignored():
    inv, attn = _ours("abf", model_base=10000.0, base=500000.0)
    torch.testing.assert_close(inv.double(), _plain(500000.0), rtol=1e-6, atol=0)
    assert attn == 1.0
    with pytest.raises(LongqaError, match="abf.*base"):
        _ours("abf")


def _yarn_reference(factor: float, base: float = 10000.0, d: int = HEAD_DIM, l0: int = L0):
    """YaRN written from arXiv:2309.00071 §3.2 with r(i) = L0 / wavelength_i."""
    out = []
    for i in range(d // 2):
        theta = base ** (-2 * i / d)
        # dim index where the pair makes `rot` rotations over L0, truncated like the reference
        lo = max(math.floor(d * math.log(l0 / (32 * 2 * math.pi)) / (2 * math.log(base))), 0)
        hi = min(math.ceil(d * math.log(l0 / (1 * 2 * math.pi)) / (2 * math.log(base))), d - 1)
        ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)
        out.append(theta / factor * ramp + theta * (1 - ramp))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("seq_len", "margin"), [(None, 512), (10, 512), (1000, 512), (300, 0)])
def test_dynamic_yarn_formula(seq_len, margin):
    inv, attn = _ours("dynamic-yarn", seq_len=seq_len, margin=margin)
    s = 1.0 if seq_len is None else max(1.0, (seq_len + margin) / L0)
    torch.testing.assert_close(inv.double(), _yarn_reference(s), rtol=1e-5, atol=0)
    assert attn == pytest.approx(1.0 if s == 1.0 else 0.1 * math.log(s) + 1)
    static, static_attn = _ours("yarn", factor=s)
    torch.testing.assert_close(inv, static, rtol=0, atol=0)
    assert attn == static_attn


def test_none_and_overrides():
    inv, attn = _ours("none")
    torch.testing.assert_close(inv.double(), _plain(10000.0), rtol=1e-6, atol=0)
    assert attn == 1.0
    _, attn = _ours("yarn", factor=4.0, attention_factor=1.5)
    assert attn == 1.5
    # factor derived from the target window when unset
    a, _ = _ours("linear", max_position_embeddings=4 * L0)
    b, _ = _ours("linear", factor=4.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the spec's original window replaces the model's
    c, _ = _ours("yarn", factor=4.0, original_max_position_embeddings=4096)
    d, _ = compute_rope(
        {"method": "yarn", "factor": 4.0},
        head_dim=HEAD_DIM,
        base=10000.0,
        original_max_position_embeddings=4096,
    )
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_bad_params_are_one_line_errors():
    with pytest.raises(LongqaError, match="unknown rope method 'foo'; available: none, linear"):
        compute_rope({"method": "foo"}, head_dim=8, base=1e4, original_max_position_embeddings=8)
    with pytest.raises(LongqaError, match="factor must be >= 1"):
        check_params({"method": "yarn", "factor": 0.5})
    for method in ("linear", "ntk", "yarn", "llama3", "dynamic-ntk"):
        with pytest.raises(LongqaError, match=f"'{method}' needs a factor"):
            compute_rope(
                {"method": method}, head_dim=8, base=1e4, original_max_position_embeddings=8
            )
    with pytest.raises(LongqaError, match="head_dim"):
        compute_rope({"method": "none"}, head_dim=7, base=1e4, original_max_position_embeddings=8)
    with pytest.raises(LongqaError, match="unknown rope method"):
        is_dynamic("nope")
    # nothing multi-line reaches the user
    try:
        check_params({"method": "nope"})
    except LongqaError as exc:
        assert "\n" not in str(exc)


def test_rope_report_consistent():
    rep = rope_report(
        {"method": "yarn", "factor": 4.0},
        head_dim=HEAD_DIM,
        base=10000.0,
        original_max_position_embeddings=L0,
    )
    inv, attn = _ours("yarn", factor=4.0)
    assert rep["inv_freq"] == inv.tolist() and rep["attention_factor"] == attn
    for before, after, scale in zip(
        rep["wavelength_before"], rep["wavelength_after"], rep["scale"], strict=True
    ):
        assert after / before == pytest.approx(scale, rel=1e-5)
    assert rep["scale"][0] == pytest.approx(1.0) and rep["scale"][-1] == pytest.approx(4.0)
