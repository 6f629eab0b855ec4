"""Small random Llama models for the fast tests, the benchmarks' CPU runs and dry runs.

Usage::

    from longqa.testing.tiny import tiny_llama_config, with_lora
    model = with_lora(LlamaForCausalLM(tiny_llama_config()), r=8, target_modules="all-linear")

``TINY_SHAPE`` is 2 layers, hidden 64, GQA 4/2 heads, vocabulary 128: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
}


def tiny_llama_config(**overrides: Any) -> Any:
    """A ``LlamaConfig`` small enough for CPU unit tests; keyword arguments override fields."""
    from transformers import LlamaConfig

    fields: dict[str, Any] = {**TINY_SHAPE, "rope_theta": 10000.0}
    fields.update(overrides)
    return LlamaConfig(**fields)


def with_lora(model: Any, **lora: Any) -> Any:
    """``model`` wrapped by peft LoRA (``lora``: ``LoraConfig`` fields) with a non-zero ``lora_B``,
    so that every LoRA path carries gradient from the first step."""
    import torch
    from peft import LoraConfig, get_peft_model

    from longqa.models.load import peft_wrapping

    with peft_wrapping():
        model = get_peft_model(model, LoraConfig(**lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model
