"""The tiny random model shape the fast tests use (2 layers, hidden 64, GQA 4/2 heads)."""

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
