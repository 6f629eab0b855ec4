"""The model-family registry: every entry matches the installed transformers, and each consumer
(RoPE patch, fused RoPE kernel, GGUF converter, checkpoint check) reads it."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny import TINY_SHAPE

from longqa.core.errors import LongqaError
from longqa.patch.families import (
    FAMILIES,
    ORIGINAL_QWEN,
    family_class_of,
    family_of,
    fused_rope_families,
    gguf_architectures,
    is_hub_kernel_func,
    rope_function,
    supported_model_types,
)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_entry_matches_transformers(name):
    from transformers import AutoConfig

    fam = FAMILIES[name]
    assert fam.model_type == name
    config = AutoConfig.for_model(name, **TINY_SHAPE)
    assert config.model_type == name and family_of(config) is fam
    rotary = fam.rotary_class()(config=config)
    assert isinstance(rotary.inv_freq, torch.Tensor) and family_class_of(rotary, "rotary") is fam
    assert family_class_of(rotary, "attention") is None
    assert fam.attention_class().__module__ == fam.modeling_name
    if fam.fused_rope:  # the kernel takes over this call: (q, k, cos, sin) must be its signature
        # a plain function, or (transformers >= 5.25 with `kernels`) a hub-kernel Func module
        # whose forward is (*args, **kwargs): read the function it wraps
        bound = fam.modeling().apply_rotary_pos_emb
        assert inspect.isfunction(bound) or is_hub_kernel_func(bound), type(bound)
        params = list(inspect.signature(fam.rope_function()).parameters)
        assert params[:4] == ["q", "k", "cos", "sin"]
        assert fam.rope_function().__module__ == fam.modeling_name


def test_rope_function_reads_both_forms_and_refuses_others():
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):  # noqa: ANN001, ANN202
        return q, k

    assert rope_function(apply_rotary_pos_emb) is apply_rotary_pos_emb
    kernels = pytest.importorskip("kernels")
    func_module = kernels.use_kernel_forward_from_hub("rotary_pos_emb")(apply_rotary_pos_emb)
    assert is_hub_kernel_func(func_module) and rope_function(func_module) is apply_rotary_pos_emb
    with pytest.raises(LongqaError, match="neither a function nor a hub-kernel Func module"):
        rope_function(torch.nn.Identity())


def test_gguf_architectures_are_ones_transformers_reads():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert gguf_architectures() and set(gguf_architectures()) <= set(GGUF_SUPPORTED_ARCHITECTURES)


def test_derived_lists():
    assert supported_model_types() == (*FAMILIES, ORIGINAL_QWEN)
    assert set(fused_rope_families()) == {"llama", "qwen2", "qwen3", "mistral"}
    with pytest.raises(LongqaError, match="rope scaling does not support model type 'gpt2'"):
        family_of(type("Cfg", (), {"model_type": "gpt2"})(), "rope scaling")


def test_consumers_read_the_registry(monkeypatch):
    """Dropping a family from the registry is seen by the RoPE patch and the kernel patch."""
    from tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    from longqa.config.recipe import KernelsConfig, MemoryConfig
    from longqa.patch import families
    from longqa.patch.kernels import apply_kernels, revert_kernels
    from longqa.patch.rope import apply_rope_scaling

    model = LlamaForCausalLM(tiny_llama_config())
    monkeypatch.delitem(families.FAMILIES, "llama")
    with pytest.raises(LongqaError, match="no rotary embedding module"):
        apply_rope_scaling(model, {"method": "linear", "factor": 2.0})
    notes = apply_kernels(model, KernelsConfig(rope=True), MemoryConfig(), force_triton=True)
    revert_kernels(model)
    assert notes == [
        "fused RoPE skipped: model type 'llama' not supported (supported: qwen2, qwen3, mistral)"
    ]
