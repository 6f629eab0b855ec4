"""GGUF export: metadata llama.cpp reads, tensor layout (Q/K permutation) checked against a NumPy
re-implementation of llama.cpp's rope, CLI `export --gguf`, and RoPE specs GGUF cannot express."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.models.export_gguf import check_gguf_rope_spec, gguf_rope_fields

sys.path.insert(0, str(Path(__file__).parent))
from test_export import L0, make_bundle  # noqa: E402


def _fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items()}


def test_rope_fields_for_each_rope_type():
    yarn = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 2.0, "beta_fast": 32.0,
            "beta_slow": 1.0, "original_max_position_embeddings": 8192,
            "attention_factor": 0.1 * math.log(2.0) + 1}  # fmt: skip
    f = gguf_rope_fields(yarn, 16384)
    assert f == {
        "context_length": 16384,
        "rope.freq_base": 1e5,
        "rope.scaling.type": "yarn",
        "rope.scaling.factor": 2.0,
        "rope.scaling.original_context_length": 8192,
        "rope.scaling.attn_factor": pytest.approx(1.0),  # llama.cpp applies 0.1·ln s + 1 itself
    }
    # an overridden attention factor is stored relative to llama.cpp's own mscale
    over = gguf_rope_fields({**yarn, "attention_factor": 1.5}, 16384)
    assert over["rope.scaling.attn_factor"] == pytest.approx(1.5 / (0.1 * math.log(2) + 1))
    lin = gguf_rope_fields({"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}, 256)
    assert lin["rope.scaling.type"] == "linear" and lin["rope.scaling.factor"] == 4.0
    assert "rope.scaling.attn_factor" not in lin
    plain = gguf_rope_fields({"rope_type": "default", "rope_theta": 5e5}, 4096)
    assert plain == {"context_length": 4096, "rope.freq_base": 5e5, "rope.scaling.type": "none"}
    l3 = gguf_rope_fields({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}, 4096)
    assert l3["rope.scaling.type"] == "none"  # its scaling lives in the rope_freqs tensor
    with pytest.raises(LongqaError, match="rope_type 'longrope' cannot be written to GGUF"):
        gguf_rope_fields({"rope_type": "longrope", "rope_theta": 5e5, "factor": 8.0}, 4096)
    with pytest.raises(LongqaError, match="beta_fast=16.0.*always use 32 and 1"):
        gguf_rope_fields({**yarn, "beta_fast": 16.0}, 16384)


def test_specs_llama_cpp_cannot_express_fail_before_merging():
    check_gguf_rope_spec(None)
    for ok in ("yarn", "dynamic-yarn", "linear", "ntk", "dynamic-ntk", "abf", "none", "llama3"):
        check_gguf_rope_spec(RopeConfig(method=ok, factor=2.0, base=5e5))
    with pytest.raises(LongqaError, match="'dynamic-yarn' with beta_fast=8.0"):
        check_gguf_rope_spec(RopeConfig(method="dynamic-yarn", beta_fast=8.0))


def _llama_cpp_rope_norm(
    x: np.ndarray, pos: int, meta: dict, n_dims: int, freq_factors: np.ndarray | None = None
) -> np.ndarray:
    """llama.cpp's CPU rope, NORM mode (adjacent pairs), with YaRN (ggml-cpu ``rope_yarn`` and
    ``ggml_rope_yarn_corr_dims``; attn factor as ``llama-context.cpp`` derives it) and the optional
    ``rope_freqs`` divisors. x: [heads, d]."""
    base = meta["llama.rope.freq_base"]
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = meta.get("llama.rope.scaling.factor", 1.0) if kind != "none" else 1.0
    freq_scale = 1.0 / factor
    ext = 1.0 if kind == "yarn" else 0.0
    n_orig = meta.get("llama.rope.scaling.original_context_length", meta["llama.context_length"])
    attn = meta.get("llama.rope.scaling.attn_factor", 1.0)

    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(n_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(0.0, math.floor(corr_dim(32.0)))
    high = min(n_dims - 1.0, math.ceil(corr_dim(1.0)))
    out = x.copy()
    for i0 in range(0, n_dims, 2):
        extrap = pos * base ** (-i0 / n_dims)
        if freq_factors is not None:
            extrap /= freq_factors[i0 // 2]
        theta, mscale = freq_scale * extrap, attn
        if ext:
            y = (i0 / 2 - low) / max(0.001, high - low)
            mix = (1 - min(1.0, max(0.0, y))) * ext
            theta = theta * (1 - mix) + extrap * mix
            mscale *= 1 + 0.1 * math.log(1 / freq_scale)
        c, s = math.cos(theta) * mscale, math.sin(theta) * mscale
        x0, x1 = x[:, i0], x[:, i0 + 1]
        out[:, i0], out[:, i0 + 1] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


@pytest.mark.parametrize(
    "rope",
    [
        {"method": "yarn", "factor": 4.0},
        {"method": "linear", "factor": 2.0},
        {"method": "llama3", "factor": 4.0},
    ],
    ids=["yarn", "linear", "llama3"],
)
def test_cli_gguf_attention_scores_match_transformers(tmp_path, rope):
    """`longqa export --gguf`: q·k scores at far-apart positions computed the llama.cpp way from the
    GGUF (permuted rows, interleaved rope, metadata) equal plain transformers' on the merged model."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from typer.testing import CliRunner

    from longqa.cli.app import app

    adapter = make_bundle(tmp_path, rope, 256 if rope["method"] == "yarn" else 128)
    out, path = tmp_path / "merged", tmp_path / "m.gguf"
    res = CliRunner().invoke(
        app, ["export", "--adapter", str(adapter), "--out", str(out), "--dtype", "float32",
              "--gguf", str(path), "--type", "f32"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"wrote {path} (f32)" in res.output
    reader, meta = _fields(path)
    factor = rope["factor"]
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert meta["llama.context_length"] == int(factor * L0)
    tensors = {t.name: np.array(t.data).reshape(list(reversed(t.shape))) for t in reader.tensors}
    ff = tensors.pop("rope_freqs.weight", None)
    if rope["method"] == "llama3":  # per-frequency divisors: 1 (kept) up to the factor (scaled)
        assert meta["llama.rope.scaling.type"] == "none" and ff.shape == (8,)
        assert ff.min() == pytest.approx(1.0) and ff.max() == pytest.approx(factor)
        assert ((ff > 1.01) & (ff < factor - 0.01)).any()  # and smoothed ones between
    else:
        assert ff is None
        assert meta["llama.rope.scaling.type"] == rope["method"]
        assert meta["llama.rope.scaling.factor"] == factor
        assert meta["llama.rope.scaling.original_context_length"] == L0
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(meta["tokenizer.ggml.tokens"]) == 264
    assert "{% for m in messages %}" in meta["tokenizer.chat_template"]
    assert {"token_embd.weight", "output.weight", "output_norm.weight"} <= set(tensors)
    assert len(tensors) == 3 + 2 * 9

    cfg = AutoConfig.from_pretrained(out)
    merged = load_file(out / "model.safetensors")
    inv_freq, attn_scale = ROPE_INIT_FUNCTIONS[rope["method"]](cfg, "cpu")
    d, n_head, n_kv = 16, 4, 2
    rng = np.random.default_rng(0)
    h = rng.standard_normal(64).astype(np.float32)
    positions = (3, 200 if rope["method"] == "yarn" else 100)

    def hf_rot(w: torch.Tensor, heads: int, pos: int) -> np.ndarray:
        x = (w @ torch.from_numpy(h)).reshape(heads, d)
        ang = pos * inv_freq
        cos, sin = (
            torch.cat([ang, ang]).cos() * attn_scale,
            torch.cat([ang, ang]).sin() * attn_scale,
        )
        rot = torch.cat([-x[:, d // 2 :], x[:, : d // 2]], dim=-1)
        return (x * cos + rot * sin).numpy()

    for layer in range(2):
        wq = merged[f"model.layers.{layer}.self_attn.q_proj.weight"]
        wk = merged[f"model.layers.{layer}.self_attn.k_proj.weight"]
        gq, gk = tensors[f"blk.{layer}.attn_q.weight"], tensors[f"blk.{layer}.attn_k.weight"]
        q_hf, k_hf = hf_rot(wq, n_head, positions[1]), hf_rot(wk, n_kv, positions[0])
        q_cpp = _llama_cpp_rope_norm((gq @ h).reshape(n_head, d), positions[1], meta, d, ff)
        k_cpp = _llama_cpp_rope_norm((gk @ h).reshape(n_kv, d), positions[0], meta, d, ff)
        scores_hf = np.einsum("hd,hd->h", q_hf, np.repeat(k_hf, 2, axis=0))
        scores_cpp = np.einsum("hd,hd->h", q_cpp, np.repeat(k_cpp, 2, axis=0))
        np.testing.assert_allclose(scores_cpp, scores_hf, rtol=1e-4, atol=1e-5)
        assert not np.allclose(gq, wq.numpy())  # the rows really are permuted


def test_cli_gguf_q8_0_without_out_and_bad_input(tmp_path):
    import gguf
    from typer.testing import CliRunner

    from longqa.cli.app import app

    adapter = make_bundle(tmp_path, {"method": "dynamic-yarn"}, 256)
    path = tmp_path / "q.gguf"
    run = lambda *a: CliRunner().invoke(app, ["export", "--adapter", str(adapter), *a])  # noqa: E731
    res = run("--gguf", str(path), "--type", "q8_0")
    assert res.exit_code == 0, res.output
    assert "dynamic-yarn exported as static yarn" in res.output  # said, not silent
    reader, meta = _fields(path)
    assert meta["general.file_type"] == 7  # MOSTLY_Q8_0
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    factor = (256 + 512) / L0  # dynamic-yarn at the trained length + margin
    assert meta["llama.rope.scaling.factor"] == pytest.approx(factor)
    assert meta["llama.context_length"] == math.ceil(factor * L0)  # the scaled window
    assert not list(tmp_path.glob(".longqa-gguf-*")) and not list(tmp_path.glob(".*.partial"))
    res = run("--gguf", str(tmp_path / "x.gguf"), "--type", "q4_k")
    assert "--type q4_k: expected one of f32, f16, q8_0" in str(res.exception)
    betas = make_bundle(tmp_path / "b", {"method": "yarn", "factor": 2.0, "beta_fast": 8.0}, 128)
    res = CliRunner().invoke(app, ["export", "--adapter", str(betas), "--gguf", str(path)])
    assert "rope method 'yarn' with beta_fast=8.0" in str(res.exception)
