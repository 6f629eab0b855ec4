"""``memory.bf16_residual``: a QLoRA-prepared model's residual stream in bf16, reversibly."""

from __future__ import annotations

import pytest
import torch
from peft import prepare_model_for_kbit_training

from longqa.config.recipe import KernelsConfig, MemoryConfig, load_recipe
from longqa.patch.kernels import apply_kernels, revert_kernels
from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
from longqa.plan.memory import ModelShape, estimate_bytes, residual_bytes
from tests.tiny import tiny_llama_config, with_lora

NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]


def _prepared_model():
    """A tiny Llama loaded in bf16 and prepared as for QLoRA (peft upcasts what it does not
    quantise to fp32), with LoRA on q/v/MLP and trained norms."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation="sdpa")).to(torch.bfloat16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    return with_lora(model, r=4, lora_alpha=8, modules_to_save=NORMS, target_modules=targets)


def _step(model, ids):
    """Loss, trainable gradients and the dtypes of the decoder layers' inputs, under bf16 autocast."""
    model.zero_grad(set_to_none=True)
    seen: list[torch.dtype] = []
    layers = model.get_base_model().model.layers
    handles = [m.register_forward_pre_hook(lambda m, a, k: seen.append(a[0].dtype) if a else
               seen.append(k["hidden_states"].dtype), with_kwargs=True) for m in layers]  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach().float(), grads, set(seen)


def test_residual_stream_is_bf16_and_the_step_agrees_with_the_fp32_stream():
    model = _prepared_model()
    base = model.get_base_model()
    ids = torch.randint(0, 128, (1, 33), generator=torch.Generator().manual_seed(1))
    assert base.model.embed_tokens.weight.dtype == torch.float32  # peft's upcast
    loss32, grads32, dtypes32 = _step(model, ids)
    assert dtypes32 == {torch.float32}

    note = apply_bf16_residual(base, torch.bfloat16)
    assert note == "bfloat16 residual stream on (10 norms, 2 frozen embedding weights)"
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    loss16, grads16, dtypes16 = _step(model, ids)
    assert dtypes16 == {torch.bfloat16}  # every layer input: the stored checkpoints halve
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=0)  # bf16 sums in the stream
    assert grads16.keys() == grads32.keys()
    for name, g32 in grads32.items():
        cos = torch.nn.functional.cosine_similarity(grads16[name].flatten(), g32.flatten(), dim=0)
        assert cos > 0.98, (name, float(cos))

    assert revert_bf16_residual(base) == 10
    assert base.model.embed_tokens.weight.dtype == torch.float32
    loss_back, grads_back, dtypes_back = _step(model, ids)
    assert dtypes_back == {torch.float32}
    assert torch.equal(loss_back, loss32)  # lossless round trip of the bf16-loaded embedding
    for name, g in grads32.items():
        torch.testing.assert_close(grads_back[name], g, rtol=0, atol=0, msg=name)


def test_through_apply_kernels_with_the_norm_in_tiles_and_a_float32_model_left_alone():
    model = _prepared_model()
    base = model.get_base_model()
    kernels = KernelsConfig(chunked_ce=False, tiled_mlp=True, tiled_mlp_tile=8,
                            tiled_mlp_norm=True, lean_rmsnorm=True)  # fmt: skip
    ids = torch.randint(0, 128, (1, 29), generator=torch.Generator().manual_seed(2))
    notes = apply_kernels(base, kernels, MemoryConfig(bf16_residual=False))
    ref_loss, ref_grads, _ = _step(model, ids)
    revert_kernels(base)
    memory = MemoryConfig(bf16_residual=True)
    notes = apply_kernels(base, kernels, memory, compute_dtype=torch.bfloat16)
    assert notes[1].startswith("bfloat16 residual stream on")
    assert notes[2].endswith("post-attention norm inside)")
    loss, grads, dtypes = _step(model, ids)
    assert dtypes == {torch.bfloat16}  # the norm inside the tiles returns bf16 as well
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    revert_kernels(base)
    assert base.model.embed_tokens.weight.dtype == torch.float32
    for layer in base.model.layers:
        for m in layer.modules():
            assert not any(k.startswith("_longqa") or k == "forward" for k in m.__dict__), m
    notes = apply_kernels(base, KernelsConfig(chunked_ce=False), memory)  # float32 compute
    assert notes == ["bf16 residual skipped: the model computes in float32"]
    assert base.model.embed_tokens.weight.dtype == torch.float32
    revert_kernels(base)


def test_planner_halves_the_stream_and_the_frozen_embeddings():
    off = load_recipe("llama3-8b-abf128k")
    on = load_recipe("llama3-8b-abf128k", ["memory.bf16_residual=true"])
    assert (residual_bytes(off), residual_bytes(on)) == (4, 2)
    shape = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256)
    a, b = estimate_bytes(off, shape, 65536), estimate_bytes(on, shape, 65536)
    assert b["checkpointed activations"] == a["checkpointed activations"] / 2
    assert b["embeddings + LM head"] == a["embeddings + LM head"] / 2
    assert b["layer recompute"] < 0.8 * a["layer recompute"]
    fp32 = load_recipe("smollm2-135m-yarn16k", ["memory.bf16_residual=true", "model.dtype=float32"])
    assert residual_bytes(fp32) == 4  # a float32 model has no bf16 stream to keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_only_half_precision_compute_applies(dtype):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    assert apply_bf16_residual(model, dtype).startswith("bf16 residual skipped")
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert revert_bf16_residual(model) == 0
