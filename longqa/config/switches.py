"""The recipe's kernel and memory switches (``kernels:``, ``memory:``), part of the one schema.

Usage::

    from longqa.config.recipe import KernelsConfig, MemoryConfig   # re-exported there
    KernelsConfig(tiled_mlp=True, tiled_mlp_norm=True).tiled_mlp_norm

Each switch is applied by :func:`longqa.patch.kernels.apply_kernels` and modelled by the memory
planner (:mod:`longqa.plan.memory`); :class:`StrictModel` is the base of every recipe section
(unknown keys and wrong types are errors).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KernelsConfig(StrictModel):
    rope: bool = Field(False, description="fused Triton RoPE (GPU only)")
    chunked_ce: bool = Field(
        True, description="training loss through chunked linear cross-entropy (no T x vocab logits)"
    )
    tiled_mlp: bool = Field(False, description="MLP over sequence tiles (ALST): O(tile) memory")
    tiled_mlp_tile: int = Field(0, ge=0, description="tokens per MLP tile; 0 = the hidden size")
    tiled_mlp_norm: bool = Field(
        False,
        description="the post-attention RMSNorm runs inside the tiled MLP's tiles (exact; needs "
        "tiled_mlp)",
    )
    lean_rmsnorm: bool = Field(
        False, description="RMSNorm saves x and 1/rms, not fp32 normalised values (exact)"
    )
    lean_lora_dropout: bool = Field(
        False,
        description="LoRA dropout inside lora_A: saves the input once and a bit-packed mask "
        "(same law, a different draw than nn.Dropout)",
    )

    @model_validator(mode="before")
    @classmethod
    def _earlier_key_name(cls, data: Any) -> Any:
        """``fused_ce``, the key's earlier name (recipes saved in adapter bundles), means
        ``chunked_ce``; given both (a ``--set`` on a recipe file), the earlier name was set last."""
        if isinstance(data, dict) and "fused_ce" in data:
            data = dict(data)
            data["chunked_ce"] = data.pop("fused_ce")
        return data

    @model_validator(mode="after")
    def _norm_needs_tiles(self) -> KernelsConfig:
        if self.tiled_mlp_norm and not self.tiled_mlp:
            raise ValueError(
                "tiled_mlp_norm: true needs tiled_mlp: true (the norm runs in its tiles)"
            )
        return self


CPU_RETURN_FREED_FROM = 4096  # tokens: below, glibc's heap reuse is faster and its overhead small


class MemoryConfig(StrictModel):
    offload_activations: bool = Field(False, description="checkpoint inputs to pinned CPU (GPU)")
    bf16_residual: bool = Field(
        False,
        description="QLoRA in bf16: keep the residual stream in bf16 (frozen embedding and norm "
        "outputs), not peft's fp32 upcast; halves activations, changes rounding",
    )
    cpu_return_freed: bool | Literal["auto"] = Field(
        "auto",
        description="CPU: freed blocks go back to the OS (lower RSS, more page faults); auto = "
        f"from {CPU_RETURN_FREED_FROM:,} tokens on",
    )
