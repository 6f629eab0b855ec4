"""The planner's per-token activation items against live-tensor measurements of a small model.

``benchmarks/bench_layer_memory.py`` measures one decoder layer prepared as for QLoRA training
(NF4 linears, fp32 norms and residual, LoRA with dropout under bf16 autocast, SDPA, checkpointing);
here the same measurement runs at hidden 64 / intermediate 224 (Llama-3-8B's ratio) / 4:2 heads,
and the planner's items for that shape must agree within 6 %, so neither can drift from the other.
"""

from __future__ import annotations

import pytest
from bench_modules import bench_fixture

from longqa.config.recipe import load_recipe
from longqa.plan.memory import (
    TILED_MLP_EXTRA,
    ModelShape,
    estimate_bytes,
    forward_bytes_per_token,
    layer_bytes_per_token,
    loss_bytes,
    mlp_bytes_per_token,
)

DIMS = {"hidden": 64, "inter": 224, "heads": 4, "kv_heads": 2}
SHAPE = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, inter=224, vocab=256)
TOLERANCE = 0.06


bench = bench_fixture("bench_layer_memory")


def _slope(bench, model, tokens=(128, 256)) -> float:
    a, b = (bench.measure(model, t)["peak_bytes"] for t in tokens)
    return (b - a) / (tokens[1] - tokens[0])


def test_layer_and_mlp_items_match_the_measured_layer(bench):
    from longqa.patch.rmsnorm import apply_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

    # LoRA r16, dropout 0.1, trained norms, NF4; the switches off (the test applies them itself)
    recipe = load_recipe(
        "llama3-8b-abf128k", ["kernels.tiled_mlp=false", "kernels.lean_rmsnorm=false"]
    )
    layer = sum(layer_bytes_per_token(recipe, SHAPE).values())
    mlp = sum(mlp_bytes_per_token(recipe, SHAPE).values())
    model = bench.build_layer_model(recipe, DIMS)
    untiled = _slope(bench, model)
    apply_tiled_mlp(model, 32)
    tiled = _slope(bench, model)
    tiled_peak_128 = bench.measure(model, 128)["peak_bytes"]
    assert tiled == pytest.approx(layer, rel=TOLERANCE)
    assert untiled - tiled == pytest.approx(mlp, rel=TOLERANCE)
    # one tile's working set: the peak's growth with the tile size at a fixed length
    revert_tiled_mlp(model)
    apply_tiled_mlp(model, 64)
    per_tile_token = (bench.measure(model, 128)["peak_bytes"] - tiled_peak_128) / 32
    assert per_tile_token == pytest.approx(mlp * (1 + TILED_MLP_EXTRA), rel=TOLERANCE)
    revert_tiled_mlp(model)
    apply_tiled_mlp(model, 32)
    apply_lean_rmsnorm(model)
    lean = _slope(bench, model)
    lean_recipe = load_recipe("llama3-8b-abf128k", ["kernels.lean_rmsnorm=true"])
    saved = layer - sum(layer_bytes_per_token(lean_recipe, SHAPE).values())
    assert saved == 2 * 4 * 64  # two trained norms' fp32 normalised values
    assert tiled - lean == pytest.approx(saved, rel=TOLERANCE)
    # kernels.tiled_mlp_norm: the post-attention norm inside the tiles (with lean RMSNorm). The
    # backward loses one [T, H] fp32 tensor; the recompute's attention forward is then the peak
    revert_tiled_mlp(model)
    apply_tiled_mlp(model, 32, with_norm=True)
    fused_recipe = load_recipe(
        "llama3-8b-abf128k", ["kernels.lean_rmsnorm=true", "kernels.tiled_mlp_norm=true"]
    )
    lean_planned = sum(layer_bytes_per_token(lean_recipe, SHAPE).values())
    planned = sum(layer_bytes_per_token(fused_recipe, SHAPE).values())
    assert lean_planned - planned == 4 * 64  # the MLP's saved fp32 norm output
    forward = sum(forward_bytes_per_token(fused_recipe, SHAPE).values())
    assert forward > planned
    assert _slope(bench, model, (2048, 4096)) == pytest.approx(forward, rel=TOLERANCE)
    revert_tiled_mlp(model)


def _bf16_residual_model(bench, monkeypatch):
    import torch

    import longqa.ops.rmsnorm as rmsnorm
    from longqa.patch.residual import apply_bf16_residual

    # norms run over 64-token pieces: at these lengths as at 500K tokens with 2,048-token pieces
    monkeypatch.setattr(rmsnorm, "BACKWARD_CHUNK", 64)
    recipe = load_recipe(
        "llama3-8b-abf128k", ["kernels.tiled_mlp=false", "kernels.lean_rmsnorm=false"]
    )
    model = bench.build_layer_model(recipe, DIMS)
    assert apply_bf16_residual(model, torch.bfloat16).startswith("bfloat16 residual stream on")
    base = model.get_base_model()
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16  # the measured input's dtype
    return model


def test_bf16_residual_layer_matches_its_planned_items(bench, monkeypatch):
    """``memory.bf16_residual``: the layer's backward peak as the planner itemises it (bf16
    gradients, stored input and projections; no autocast copies; norms lean), with and without
    the norm inside the MLP's tiles."""
    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

    model = _bf16_residual_model(bench, monkeypatch)
    apply_tiled_mlp(model, 32)
    recipe = load_recipe("llama3-8b-abf128k", ["memory.bf16_residual=true"])
    planned = sum(layer_bytes_per_token(recipe, SHAPE).values())
    assert planned < sum(forward_bytes_per_token(recipe, SHAPE).values())  # the peak, later on
    assert _slope(bench, model, (256, 512)) == pytest.approx(planned, rel=TOLERANCE)
    revert_tiled_mlp(model)
    apply_tiled_mlp(model, 32, with_norm=True)  # minus the MLP's saved norm output (bf16)
    fused = load_recipe(
        "llama3-8b-abf128k", ["memory.bf16_residual=true", "kernels.tiled_mlp_norm=true"]
    )
    planned_fused = sum(layer_bytes_per_token(fused, SHAPE).values())
    assert planned - planned_fused == 2 * 64
    assert _slope(bench, model, (256, 512)) == pytest.approx(planned_fused, rel=TOLERANCE)


@pytest.mark.slow
def test_bf16_residual_with_the_norm_in_tiles_peaks_in_the_planned_forward(bench, monkeypatch):
    from longqa.patch.tiled_mlp import apply_tiled_mlp

    model = _bf16_residual_model(bench, monkeypatch)
    apply_tiled_mlp(model, 32, with_norm=True)
    sets = ["memory.bf16_residual=true", "kernels.tiled_mlp_norm=true"]
    forward = sum(forward_bytes_per_token(load_recipe("llama3-8b-abf128k", sets), SHAPE).values())
    assert _slope(bench, model, (1024, 2048)) == pytest.approx(forward, rel=TOLERANCE)


@pytest.mark.slow
def test_whole_step_peak_is_stored_inputs_plus_one_layer_not_plus_the_loss(bench):
    """Two layers and the chunked loss: the step's peak grows like the stored layer inputs plus one
    layer's working set; the loss (smaller here) is not alive at the same time."""
    import torch
    import transformers.models.llama.modeling_llama as llama

    from longqa.ops.causal_lm import causal_lm_loss
    from longqa.patch.tiled_mlp import apply_tiled_mlp

    sets = ["memory.offload_activations=false", "kernels.tiled_mlp=true", "kernels.lean_rmsnorm=false",
            "kernels.tiled_mlp_tile=32", "train.loss_chunk_size=64"]  # fmt: skip
    recipe = load_recipe("llama3-8b-abf128k", sets)
    model = bench.build_layer_model(recipe, DIMS, layers=2, vocab=256)
    apply_tiled_mlp(model, 32)
    rope = llama.apply_rotary_pos_emb
    peaks = []
    for tokens in (256, 512):
        tracker = bench.LiveStorageTracker()
        ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(0))
        with bench.gpu_like(tracker), tracker, torch.autocast("cpu", dtype=torch.bfloat16):
            total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk_size=64)
            (total / n).backward()
        peaks.append(tracker.peak)
    measured = (peaks[1] - peaks[0]) / 256

    def planned(tokens: int) -> float:
        items = estimate_bytes(recipe, SHAPE, tokens)
        keys = ("checkpointed activations", "layer recompute", "MLP recompute (tiled)",
                "attention", "loss, beyond the layer peak")  # fmt: skip
        return sum(items[k] for k in keys)

    assert estimate_bytes(recipe, SHAPE, 512)["loss, beyond the layer peak"] == 0
    assert loss_bytes(recipe, SHAPE, 512) > 0
    assert measured == pytest.approx((planned(512) - planned(256)) / 256, rel=TOLERANCE)
    assert llama.apply_rotary_pos_emb is rope  # the stand-ins are gone


@pytest.mark.parametrize(("bf16", "fused"), [(False, False), (True, True)])
def test_lean_lora_dropout_layer_matches_its_planned_items(bench, monkeypatch, bf16, fused):
    """``kernels.lean_lora_dropout``: q/k/v keep their one input, o_proj SDPA's output, all four a
    bit-packed mask: the backward peak as itemised (fp32 stream; bf16 stream + norm in tiles)."""
    import longqa.ops.lora_dropout as lora_dropout
    from longqa.patch.lora_dropout import apply_lean_lora_dropout
    from longqa.patch.rmsnorm import apply_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp

    monkeypatch.setattr(lora_dropout, "CHUNK", 64)  # pieces as at long lengths
    if bf16:
        model = _bf16_residual_model(bench, monkeypatch)
    else:
        recipe = load_recipe("llama3-8b-abf128k", ["kernels.tiled_mlp=false"])
        model = bench.build_layer_model(recipe, DIMS)
        apply_lean_rmsnorm(model)
    assert apply_lean_lora_dropout(model) == "lean LoRA dropout on (7 adapted linears)"
    apply_tiled_mlp(model, 32, with_norm=fused)
    sets = ["kernels.lean_lora_dropout=true", f"kernels.tiled_mlp_norm={str(fused).lower()}",
            f"memory.bf16_residual={str(bf16).lower()}"]  # fmt: skip
    recipe = load_recipe("llama3-8b-abf128k", sets)
    planned = sum(layer_bytes_per_token(recipe, SHAPE).values())
    assert _slope(bench, model, (256, 512)) == pytest.approx(planned, rel=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_lean_lora_dropout_long_sequences_peak_within_the_planned_bound(bench, monkeypatch, bf16):
    """At long lengths the layer's peak is the attention's backward, as planned: ``o_proj``'s
    moment with the bf16 stream, q/k/v's with the fp32 one."""
    import longqa.ops.lora_dropout as lora_dropout
    from longqa.patch.lora_dropout import apply_lean_lora_dropout
    from longqa.patch.rmsnorm import apply_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp
    from longqa.plan.memory import attention_backward_bytes_per_token

    monkeypatch.setattr(lora_dropout, "CHUNK", 64)
    if bf16:
        model = _bf16_residual_model(bench, monkeypatch)
    else:
        import longqa.ops.rmsnorm as rmsnorm

        monkeypatch.setattr(rmsnorm, "BACKWARD_CHUNK", 64)
        model = bench.build_layer_model(load_recipe("llama3-8b-abf128k"), DIMS)
        apply_lean_rmsnorm(model)
    apply_lean_lora_dropout(model)
    apply_tiled_mlp(model, 32, with_norm=True)
    sets = ["kernels.lean_lora_dropout=true", "kernels.tiled_mlp_norm=true",
            f"memory.bf16_residual={str(bf16).lower()}"]  # fmt: skip
    recipe = load_recipe("llama3-8b-abf128k", sets)
    bound = max(sum(forward_bytes_per_token(recipe, SHAPE).values()),
                sum(attention_backward_bytes_per_token(recipe, SHAPE).values()))  # fmt: skip
    backward = attention_backward_bytes_per_token(recipe, SHAPE)
    assert sum(backward.values()) == bound
    moment = "o_proj: gradient of SDPA's output" if bf16 else "q/k/v: gradient of their input"
    assert any(k.startswith(moment) for k in backward)
    assert _slope(bench, model, (2048, 4096)) == pytest.approx(bound, rel=TOLERANCE)
