"""The model families longqa loads, RoPE-patches, trains and exports: one registry.

Usage::

    from longqa.patch.families import FAMILIES, family_of, supported_model_types
    fam = family_of(model.config)            # Family("llama", ...) or a one-line LongqaError
    fam.rotary_class()                       # transformers' LlamaRotaryEmbedding
    supported_model_types()                  # ("llama", "qwen2", ..., "qwen")

Every consumer reads this table: the RoPE patch finds a family's rotary module by its class, the fused
RoPE kernel takes over the ``apply_rotary_pos_emb`` of its modeling module (a plain function, or the
hub-kernel ``Func`` module transformers >= 5.25 binds there: :func:`rope_function`,
:func:`private_rope_module`), the GGUF converter accepts its
GGUF architecture, and checkpoint checks accept its ``model_type`` (plus original Qwen, which
``longqa.models.qwen_convert`` turns into Qwen2 on load). Adding a family is one entry here; the
tests check each entry against the installed transformers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
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

    def rope_function(self) -> Callable:
        """The Python function behind the modeling file's ``apply_rotary_pos_emb``."""
        return rope_function(self.modeling().apply_rotary_pos_emb)


# Where kernels' ``use_kernelized_func`` keeps an attention instance's private function modules
_PRIVATE_KERNEL_SLOTS = ("_kernel_funcs", "_hidden_kernels")


def is_hub_kernel_func(obj: object) -> bool:
    """True for the ``Func`` module ``kernels.use_kernel_forward_from_hub`` makes of a function."""
    return hasattr(obj, "kernel_layer_name") and callable(obj) and not inspect.isfunction(obj)


def rope_function(bound: object) -> Callable:
    """The plain function a modeling file's ``apply_rotary_pos_emb`` runs: the name itself when it
    is a function, else the function a hub-kernel ``Func`` module wraps (its ``forward``'s ``func``;
    see ``kernels._internals.layer.layer._create_func_module``)."""
    if inspect.isfunction(bound):
        return bound
    if is_hub_kernel_func(bound):
        func = inspect.getclosurevars(type(bound).forward).nonlocals.get("func")
        if inspect.isfunction(func):
            return func
    raise LongqaError(
        f"apply_rotary_pos_emb is a {type(bound).__name__}, neither a function nor a hub-kernel "
        "Func module: this transformers release is not supported by kernels.rope"
    )


def private_rope_module(attention: object, modeling: ModuleType) -> Any | None:
    """The attention instance's own copy of the hub-kernel ``apply_rotary_pos_emb`` module, to which
    the global routes calls while that attention runs; None when the name is a plain function."""
    bound = getattr(modeling, "apply_rotary_pos_emb", None)
    if not is_hub_kernel_func(bound):
        return None
    for slot in _PRIVATE_KERNEL_SLOTS:
        for module in (getattr(attention, "__dict__", {}).get(slot) or {}).values():
            if type(module) is type(bound):
                return module
    return None


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
