"""Planner: tiled MLP and the loss chunk chosen from memory, and the longest lengths they reach."""

from __future__ import annotations

import pytest

from longqa.config.recipe import load_recipe
from longqa.ops.causal_lm import LOSS_BLOCK_BYTES, loss_chunk_from_memory
from longqa.plan.memory import (
    GB,
    KNOWN_SHAPES,
    TILED_MLP_EXTRA,
    ModelShape,
    estimate_bytes,
    layer_bytes_per_token,
    loss_bytes,
    plan_memory,
)

# the recipes' memory switches off (llama3-8b-abf128k ships with the tiled MLP and lean RMSNorm)
PLAIN = ["kernels.tiled_mlp=false", "kernels.lean_rmsnorm=false"]
ALL_ON = [
    *PLAIN,
    "kernels.tiled_mlp=true",
    "kernels.chunked_ce=true",
    "kernels.rope=true",
    "memory.offload_activations=true",
    "train.loss_chunk_size=0",
]


def test_loss_chunk_from_memory_fits_the_budget():
    for vocab in (32000, 49152, 128256, 152064):
        chunk = loss_chunk_from_memory(vocab)
        assert chunk % 256 == 0
        assert 2 * 4 * chunk * vocab <= LOSS_BLOCK_BYTES < 2 * 4 * (chunk + 256) * vocab
    assert loss_chunk_from_memory(128256) == 1024
    assert loss_chunk_from_memory(10**9) == 256  # never below one 256-token block


def test_measured_terms_follow_the_formula():
    shape = ModelShape(**KNOWN_SHAPES["llama-3-8b"])
    h, inter, kv, t = 4096, 14336, 1024, 131072
    plain = estimate_bytes(load_recipe("llama3-8b-abf128k", PLAIN), shape, t)
    # per token, fp32 residual (4 B), LoRA dropout mask (1 B) + bf16 lora_A input (2 B) per value
    mlp = 4 * 4 * inter + (4 + 1 + 2) * inter + 2 * (2 + 1) * h + 3 * 2 * 16
    assert plain["MLP recompute"] == t * mlp
    layer = (3 * 4 * h + 4 * h + 2 * 4 * h + (2 + 1) * (3 * h + h)
             + 2 * (h + 2 * kv) + 2 * h + 4 * 32 + 2 * 128 * 4 + 4 * 2 * 16 + 16)  # fmt: skip
    assert plain["layer recompute"] == t * layer
    assert round(layer / (2 * h), 2) == 20.66  # H·2 units; 20.67 measured (layer_memory.md)
    tiled = estimate_bytes(
        load_recipe("llama3-8b-abf128k", [*PLAIN, "kernels.tiled_mlp=true"]), shape, t
    )
    assert "MLP recompute" not in tiled
    tile_mlp = mlp * (1 + TILED_MLP_EXTRA)  # a tile's intermediates and its backward's gradients
    assert tiled["MLP recompute (tiled)"] == pytest.approx(h * tile_mlp)  # tile = hidden size
    assert tiled["layer recompute"] == plain["layer recompute"]
    small = load_recipe(
        "llama3-8b-abf128k", [*PLAIN, "kernels.tiled_mlp=true", "kernels.tiled_mlp_tile=512"]
    )
    assert estimate_bytes(small, shape, t)["MLP recompute (tiled)"] == pytest.approx(512 * tile_mlp)
    auto = load_recipe("llama3-8b-abf128k", [*PLAIN, "train.loss_chunk_size=0"])
    assert loss_bytes(auto, shape, t) == 2 * 1024 * 128256 * 4 + t * h * 16
    no_ckpt = load_recipe(
        "llama3-8b-abf128k",
        [*PLAIN, "kernels.tiled_mlp=true", "train.gradient_checkpointing=false"],
    )
    assert estimate_bytes(no_ckpt, shape, t)["checkpointed activations"] == pytest.approx(
        32 * (t * h * 4 + t * layer + h * tile_mlp)
    )


def test_lean_rmsnorm_removes_the_trained_norms_fp32_values():
    shape = ModelShape(**KNOWN_SHAPES["llama-3-8b"])
    h, t = 4096, 131072
    base = load_recipe("llama3-8b-abf128k", PLAIN)
    lean = load_recipe("llama3-8b-abf128k", [*PLAIN, "kernels.lean_rmsnorm=true"])
    assert layer_bytes_per_token(base, shape)["trained RMSNorms' fp32 normalised values"] == 8 * h
    assert layer_bytes_per_token(lean, shape)["trained RMSNorms' fp32 normalised values"] == 0
    assert loss_bytes(base, shape, t) - loss_bytes(lean, shape, t) == t * h * 4  # the final norm
    frozen = load_recipe("llama3-8b-abf128k", [*PLAIN, "lora.trainable_norms=false"])
    assert layer_bytes_per_token(frozen, shape)["trained RMSNorms' fp32 normalised values"] == 0
    with_lean = plan_memory(
        load_recipe("llama3-8b-abf128k", [*ALL_ON, "kernels.lean_rmsnorm=true"])
    )
    without = plan_memory(load_recipe("llama3-8b-abf128k", ALL_ON))
    # +19 %; the backward still sets the peak (q and k reach SDPA in bf16 from the fused RoPE)
    assert with_lean.max_fit_len > 1.15 * without.max_fit_len
    assert with_lean.items["recompute's attention forward/backward, beyond"] == 0
    assert without.items["recompute's attention forward/backward, beyond"] == 0
    # with the fp32 q and k held until o_proj (no fused RoPE), the attention forward binds first
    no_rope = plan_memory(
        load_recipe(
            "llama3-8b-abf128k", [*ALL_ON, "kernels.lean_rmsnorm=true", "kernels.rope=false"]
        )
    )
    assert no_rope.items["recompute's attention forward/backward, beyond"] > 0
    assert no_rope.max_fit_len < with_lean.max_fit_len


def test_bf16_residual_reaches_512k_and_the_norm_in_tiles_lowers_only_the_backward():
    """benchmarks/results/plan_longest.md: Llama-3-8B on 80 GB reaches 512K (524,288) on paper
    only with the bf16 residual stream; the norm inside the MLP's tiles lowers the backward's
    items, which lengthens Llama-3-8B's fp32-stream context (its backward binds) but not
    Qwen-14B's or the bf16 stream's (the recompute's attention forward binds there)."""
    lean = [*ALL_ON, "kernels.lean_rmsnorm=true"]
    fused = [*lean, "kernels.tiled_mlp_norm=true"]
    for name, goal in (("llama3-8b-abf128k", 524_288), ("qwen14b-yarn32k", 400_000)):
        plan = {k: plan_memory(load_recipe(name, sets)) for k, sets in (
            ("lean", lean), ("fused", fused), ("bf16", [*lean, "memory.bf16_residual=true"]),
            ("both", [*fused, "memory.bf16_residual=true"]))}  # fmt: skip
        assert plan["lean"].max_fit_len < goal <= plan["bf16"].max_fit_len, name
        assert plan["fused"].items["layer recompute"] < plan["lean"].items["layer recompute"]
        if name.startswith("llama3"):
            assert plan["fused"].max_fit_len > 1.04 * plan["lean"].max_fit_len, name
        else:
            assert plan["fused"].max_fit_len == plan["lean"].max_fit_len, name
        assert plan["both"].max_fit_len == plan["bf16"].max_fit_len, name
        assert plan["both"].total_gb <= plan["bf16"].total_gb  # lower where the backward binds
        assert any("inside the MLP's tiles" in n for n in plan["fused"].notes)


def test_everything_on_reaches_longer_contexts():
    for name in ("llama3-8b-abf128k", "qwen14b-yarn32k"):
        today = plan_memory(load_recipe(name, PLAIN), gpu_mem_gb=80)
        on = plan_memory(load_recipe(name, ALL_ON), gpu_mem_gb=80)
        assert on.max_fit_len > 2 * today.max_fit_len, name
        assert any("chosen from memory" in n for n in on.notes)
        assert any(n.startswith("tiled MLP: ") for n in on.notes)
        assert on.total_gb * GB < today.total_gb * GB
    llama = plan_memory(load_recipe("llama3-8b-abf128k", ALL_ON), gpu_mem_gb=80)
    # benchmarks/results/plan_longest.md: ~351K; short of 512K (524,288) with a fp32 stream
    assert 300_000 < llama.max_fit_len < 524_288


def test_loss_chunk_zero_is_chosen_from_memory_in_training(monkeypatch):
    import torch
    from transformers import LlamaForCausalLM

    import longqa.ops.causal_lm as plan
    from longqa.ops.causal_lm import causal_lm_loss
    from tests.tiny import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    ids = torch.randint(0, 128, (1, 40))
    batch = {"input_ids": ids, "labels": ids}
    asked: list[int] = []

    def chunk_for(vocab: int) -> int:
        asked.append(vocab)
        return 16

    monkeypatch.setattr(plan, "loss_chunk_from_memory", chunk_for)
    auto, n = causal_lm_loss(model, batch, chunk_size=0)
    fixed, _ = causal_lm_loss(model, batch, chunk_size=16)
    full, _ = causal_lm_loss(model, batch, chunked=False)
    assert asked == [128] and int(n) == 39
    torch.testing.assert_close(auto, fixed, rtol=0, atol=0)
    torch.testing.assert_close(auto, full, rtol=1e-5, atol=1e-5)
