"""The model families longqa loads, RoPE-patches, trains and exports: one registry.

Usage::

    from longqa.patch.families import FAMILIES, family_of, supported_model_types
    fam = family_of(model.config)            # Family("llama", ...) or a one-line LongqaError
    fam.rotary_class()                       # transformers' LlamaRotaryEmbedding
    supported_model_types()                  # ("llama", "qwen2", ..., "qwen")

Every consumer reads this table: the RoPE patch finds a family's rotary module by its class, the fused
RoPE kernel swaps the ``apply_rotary_pos_emb`` of its modeling module, the GGUF converter accepts its
GGUF architecture, and checkpoint checks accept its ``model_type`` (plus original Qwen, which
``longqa.models.qwen_convert`` turns into Qwen2 on load). Adding a family is one entry here; the
tests check each entry against the installed transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from longqa.core.errors import LongqaError

ORIGINAL_QWEN = "qwen"  # model_type of original-Qwen checkpoints, converted to qwen2 on load


@dataclass(frozen=True)
class Family:
    """One transformers model family: where its modules live and what longqa can do with it."""

    model_type: str  # config.model_type
    prefix: str  # class-name prefix in transformers: LlamaRotaryEmbedding, LlamaAttention
    gguf_architecture: str | None = None  # GGUF general.architecture converted to this family
    fused_rope: bool = (
        True  # its attention calls the module-level apply_rotary_pos_emb(q, k, cos, sin)
    )

    @property
    def modeling_name(self) -> str:
        return f"transformers.models.{self.model_type}.modeling_{self.model_type}"

    def modeling(self) -> ModuleType:
        """The family's transformers modeling module (imported on first use)."""
        return importlib.import_module(self.modeling_name)

    def rotary_class(self) -> type:
        return getattr(self.modeling(), f"{self.prefix}RotaryEmbedding")

    def attention_class(self) -> type:
        return getattr(self.modeling(), f"{self.prefix}Attention")


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "Llama", gguf_architecture="llama"),
        Family("qwen2", "Qwen2", gguf_architecture="qwen2"),
        Family("qwen3", "Qwen3", gguf_architecture="qwen3"),
        Family("mistral", "Mistral", gguf_architecture="mistral"),
        Family("mixtral", "Mixtral", fused_rope=False),
        Family("qwen2_moe", "Qwen2Moe", fused_rope=False),
        Family("qwen3_moe", "Qwen3Moe", fused_rope=False),
    )
}


def supported_model_types() -> tuple[str, ...]:
    """Model types longqa can load, patch and export (plus original Qwen, converted on load)."""
    return (*FAMILIES, ORIGINAL_QWEN)


def gguf_architectures() -> tuple[str, ...]:
    """GGUF architectures whose transformers model longqa can RoPE-patch and train."""
    return tuple(f.gguf_architecture for f in FAMILIES.values() if f.gguf_architecture)


def fused_rope_families() -> tuple[str, ...]:
    """Model types whose attention the fused Triton RoPE kernel can take over."""
    return tuple(name for name, f in FAMILIES.items() if f.fused_rope)


def family_of(config: Any, what: str = "longqa") -> Family:
    """The registry entry of a transformers config, else a one-line error naming what needs it."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise LongqaError(
            f"{what} does not support model type '{model_type}'; supported: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def family_class_of(module: Any, kind: str) -> Family | None:
    """The family whose ``kind`` class (``"rotary"`` or ``"attention"``) ``module`` is, else None."""
    for fam in FAMILIES.values():
        if type(module).__module__ != fam.modeling_name:
            continue
        cls = fam.rotary_class() if kind == "rotary" else fam.attention_class()
        if isinstance(module, cls):
            return fam
    return None
