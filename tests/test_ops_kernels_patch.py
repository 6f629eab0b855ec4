"""apply_kernels / revert_kernels on tiny Llama and Qwen2 models (Triton RoPE in the interpreter)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the CPU interpreter here

import pytest
import torch
from tiny import TINY_SHAPE
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.core.errors import LongqaError
from longqa.ops.offload import ActivationOffloader
from longqa.patch import fused_rope
from longqa.patch import kernels as kernels_patch
from longqa.patch.families import private_rope_module
from longqa.patch.kernels import apply_kernels, revert_kernels

TINY = TINY_SHAPE
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, modeling_llama),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, modeling_qwen2),
}
ALL_ON = KernelsConfig(rope=True, chunked_ce=True)
OFFLOAD = MemoryConfig(offload_activations=True)


def _model(family: str, seed: int = 0, **overrides):
    config_cls, model_cls, _ = FAMILIES[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**{**TINY, **overrides})).eval()


def _ids(shape=(2, 12), seed=1):
    return torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _restore_library_functions():
    yield
    for _, _, modeling in FAMILIES.values():  # a failed test must not leak a patch into the next
        fn = modeling.apply_rotary_pos_emb
        if getattr(fn, "_longqa_fused", False):
            modeling.apply_rotary_pos_emb = fn.__wrapped__
            fused_rope._patched_modules.pop(modeling.__name__, None)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _private_forwards(model, modeling) -> list:
    """Each attention's own hub-kernel RoPE module's instance ``forward`` (None: the class's)."""
    out = []
    for layer in model.model.layers:
        private = private_rope_module(layer.self_attn, modeling)
        out.append(None if private is None else private.__dict__.get("forward"))
    return out


def test_cpu_skips_gpu_only_features_with_notes():
    model = _model("llama")
    model.activation_checkpointing_enable()
    original = modeling_llama.apply_rotary_pos_emb
    checkpoint_fn = model.model.layers[0]._gradient_checkpointing_func
    ids = _ids(seed=3)
    want = model(input_ids=ids).logits
    hooks = _hook_count(model)
    notes = apply_kernels(model, ALL_ON, OFFLOAD)
    assert notes == [
        "fused RoPE skipped: needs CUDA (model is on cpu)",
        "activation offloading skipped: needs CUDA (model is on cpu)",
    ]
    assert kernels_patch.applied_kernels(model) == notes
    # skipped means untouched: no dispatcher, no hooks, no offloading wrapper, same outputs
    assert modeling_llama.apply_rotary_pos_emb is original
    assert model.model.layers[0]._gradient_checkpointing_func is checkpoint_fn
    assert _hook_count(model) == hooks
    calls = dict(fused_rope.FUSED_ROPE_CALLS)
    assert torch.equal(model(input_ids=ids).logits, want)
    assert fused_rope.FUSED_ROPE_CALLS == calls  # the dispatcher never ran
    revert_kernels(model)
    assert kernels_patch.applied_kernels(model) == []


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_forced_fused_rope_matches_unpatched_model_and_reverts(family):
    _, _, modeling = FAMILIES[family]
    original = modeling.apply_rotary_pos_emb
    model = _model(family)
    other = _model(family, seed=3)  # an unpatched model in the same process
    ids = _ids()
    pos = torch.cat([torch.arange(5), torch.arange(7)]).repeat(2, 1)  # packed: positions restart
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
        other_expected = other(input_ids=ids).logits

    notes = apply_kernels(
        model, KernelsConfig(rope=True, chunked_ce=False), MemoryConfig(), force_triton=True
    )
    assert notes == ["fused RoPE on (2 attention layers)"]
    if private_rope_module(model.model.layers[0].self_attn, modeling) is None:
        assert modeling.apply_rotary_pos_emb is not original  # plain function: swapped
    else:  # hub-kernel form: the global stays, each attention's own slot is ours
        assert modeling.apply_rotary_pos_emb is original
        assert all(f is not None for f in _private_forwards(model, modeling))
        assert _private_forwards(other, modeling) == [None, None]
    before = dict(fused_rope.FUSED_ROPE_CALLS)
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=pos).logits
    assert fused_rope.FUSED_ROPE_CALLS["fused"] == before["fused"] + 2  # one per layer
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        other_got = other(input_ids=ids).logits
    assert fused_rope.FUSED_ROPE_CALLS["fused"] == before["fused"] + 2  # other model: eager
    torch.testing.assert_close(other_got, other_expected, rtol=0, atol=0)

    revert_kernels(model)
    assert modeling.apply_rotary_pos_emb is original
    assert _private_forwards(model, modeling) == [None, None]
    assert not model._forward_pre_hooks and all(
        not m._forward_pre_hooks and not m._forward_hooks for m in model.modules()
    )


def test_forced_fused_rope_gradients_match_with_checkpointing():
    ids = _ids(seed=4)
    ref_model = _model("llama").train()
    ref_model.activation_checkpointing_enable()
    ref_model(input_ids=ids, labels=ids).loss.backward()
    model = _model("llama").train()
    model.activation_checkpointing_enable()
    apply_kernels(model, ALL_ON, MemoryConfig(), force_triton=True)
    before = fused_rope.FUSED_ROPE_CALLS["fused"]
    model(input_ids=ids, labels=ids).loss.backward()
    assert fused_rope.FUSED_ROPE_CALLS["fused"] == before + 4  # forward + recompute, 2 layers
    revert_kernels(model)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_simulated_offload_through_apply_kernels():
    model = _model("llama").train()
    off = ActivationOffloader(min_bytes=0, simulate=True)
    notes = apply_kernels(model, KernelsConfig(chunked_ce=False), OFFLOAD, offloader=off)
    assert notes == ["activation offloading skipped: needs gradient checkpointing enabled first"]
    model.activation_checkpointing_enable()
    notes = apply_kernels(model, KernelsConfig(chunked_ce=False), OFFLOAD, offloader=off)
    assert notes == ["activation offloading on (2 checkpointed layers)"]
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    assert off.stats.packed == 2 and off.stats.unpacked == 2
    revert_kernels(model)
    assert not hasattr(
        model.model.layers[0]._gradient_checkpointing_func, "_longqa_offload_original"
    )


def test_unsupported_head_dim_is_a_clear_error():
    model = _model("llama", head_dim=512, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(LongqaError, match="head_dim 512 unsupported.*even sizes up to 256"):
        apply_kernels(model, ALL_ON, MemoryConfig(), force_triton=True)
    assert not hasattr(modeling_llama.apply_rotary_pos_emb, "_longqa_fused")  # nothing swapped
    assert _private_forwards(model, modeling_llama) == [None, None]
    assert not fused_rope._patched_modules


class _Fp32Out(torch.nn.Linear):
    """A projection that returns fp32 under autocast, as a QLoRA model's 4-bit q/k/v do."""

    def forward(self, x):  # noqa: ANN001, ANN201
        with torch.autocast("cpu", enabled=False):
            return torch.nn.functional.linear(x.float(), self.weight)


def _qlora_like(seed: int):
    model = _model("llama", seed=seed).train()
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(layer.self_attn, name).__class__ = _Fp32Out
    model.activation_checkpointing_enable()
    return model


def test_under_autocast_fp32_q_k_leave_rope_in_the_attention_dtype_same_numbers():
    ids = _ids(seed=6)
    ref = _qlora_like(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss = ref(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    model = _qlora_like(0)
    apply_kernels(model, KernelsConfig(rope=True, chunked_ce=False), MemoryConfig(),
                  force_triton=True)  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = torch.randn(1, 4, 3, 16)  # the rotation alone: fp32 in, the attention's dtype out
        q_out, k_out = fused_rope._rotate(None, True, q, q * 1, *_cos_sin(3, 16))
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert q_out.dtype == k_out.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    for (name, p), r in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-3, atol=1e-6, msg=name)
    revert_kernels(model)
    with torch.no_grad():  # without autocast the rotation stays in place, in fp32
        q = torch.randn(1, 4, 3, 16)
        assert fused_rope.attention_dtype(q) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused_rope.attention_dtype(q) == torch.bfloat16
            assert fused_rope.attention_dtype(q.bfloat16()) is None


def _cos_sin(s: int, d: int):
    angle = torch.arange(s).float()[:, None] * torch.ones(d)[None, :] * 0.1
    return angle.cos()[None], angle.sin()[None]
