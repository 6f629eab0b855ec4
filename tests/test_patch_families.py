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
    if fam.fused_rope:  # the kernel swaps this module-level function: its signature must match
        params = list(inspect.signature(fam.modeling().apply_rotary_pos_emb).parameters)
        assert params[:4] == ["q", "k", "cos", "sin"]


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
