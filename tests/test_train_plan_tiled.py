"""Planner: tiled MLP and the loss chunk chosen from memory, and the longest lengths they reach."""

from __future__ import annotations

from longqa.config.recipe import load_recipe
from longqa.ops.causal_lm import LOSS_BLOCK_BYTES, loss_chunk_from_memory
from longqa.train.plan import GB, KNOWN_SHAPES, ModelShape, estimate_bytes, plan_memory

ALL_ON = [
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


def test_tiled_mlp_terms_follow_the_formula():
    shape = ModelShape(**KNOWN_SHAPES["llama-3-8b"])
    h, inter, t = 4096, 14336, 131072
    plain = estimate_bytes(load_recipe("llama3-8b-abf128k"), shape, t)
    assert plain["MLP recompute"] == t * 5 * inter * 2
    assert plain["layer recompute"] == t * 12 * h * 2
    tiled = estimate_bytes(load_recipe("llama3-8b-abf128k", ["kernels.tiled_mlp=true"]), shape, t)
    assert "MLP recompute" not in tiled
    assert tiled["MLP recompute (tiled)"] == h * 5 * inter * 2 + t * h * 2  # tile = hidden size
    small = load_recipe(
        "llama3-8b-abf128k", ["kernels.tiled_mlp=true", "kernels.tiled_mlp_tile=512"]
    )
    assert estimate_bytes(small, shape, t)["MLP recompute (tiled)"] == (512 * 5 * inter + t * h) * 2
    auto = load_recipe("llama3-8b-abf128k", ["train.loss_chunk_size=0"])
    assert estimate_bytes(auto, shape, t)["loss"] == 2 * 1024 * 128256 * 4 + t * h * 4
    no_ckpt = load_recipe(
        "llama3-8b-abf128k", ["kernels.tiled_mlp=true", "train.gradient_checkpointing=false"]
    )
    assert estimate_bytes(no_ckpt, shape, t)["checkpointed activations"] == 32 * t * 13 * h * 2


def test_everything_on_reaches_longer_contexts():
    for name in ("llama3-8b-abf128k", "qwen14b-yarn32k"):
        today = plan_memory(load_recipe(name), gpu_mem_gb=80)
        on = plan_memory(load_recipe(name, ALL_ON), gpu_mem_gb=80)
        assert on.max_fit_len > 1.5 * today.max_fit_len, name
        assert any("chosen from memory" in n for n in on.notes)
        assert any(n.startswith("tiled MLP: ") for n in on.notes)
        assert on.total_gb * GB < today.total_gb * GB
    llama = plan_memory(load_recipe("llama3-8b-abf128k", ALL_ON), gpu_mem_gb=80)
    assert 400_000 < llama.max_fit_len < 600_000  # printed in the README beside today's ~248K


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
