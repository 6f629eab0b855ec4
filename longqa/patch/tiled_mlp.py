"""Run a loaded model's decoder MLPs over sequence tiles, reversibly (``kernels.tiled_mlp``).

Usage::

    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp
    note = apply_tiled_mlp(model, tile=0)   # "tiled MLP on (30 layers, 576-token tiles)"
    ...                                     # training: MLP intermediates are O(tile), not O(seq)
    revert_tiled_mlp(model)                 # the model's own MLP forward again

Every gated MLP of the model (a module whose class name ends in ``MLP`` with ``gate_proj``,
``up_proj`` and ``down_proj`` children: Llama, Qwen2, Qwen3, Mistral, …) gets an instance-level
``forward`` that calls :func:`longqa.ops.tiled_mlp.tiled_mlp` around the class's own forward, so
peft's LoRA layers inside it and bitsandbytes' 4-bit linears run unchanged. ``tile=0`` picks the
hidden size as the tile (ALST's rule: ``ceil(seq / hidden)`` shards, so one tile's ``[tile,
intermediate]`` block is the size of one MLP weight matrix). Library source is never edited;
:func:`revert_tiled_mlp` deletes the instance attributes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from longqa.core.errors import LongqaError
from longqa.ops.tiled_mlp import tiled_mlp
from longqa.patch.forward import patch_forward, revert_forward

_ATTR = "_longqa_tiled_mlp"
MLP_CHILDREN = ("gate_proj", "up_proj", "down_proj")


def mlp_modules(model: nn.Module) -> list[nn.Module]:
    """The gated MLP modules of ``model`` (peft wrappers included) in model order."""
    found = []
    for module in model.modules():
        if type(module).__name__.endswith("MLP") and all(hasattr(module, c) for c in MLP_CHILDREN):
            found.append(module)
    return found


def default_tile(model: nn.Module) -> int:
    """The hidden size from the model's config (ALST's tile), else 1024 tokens."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(getattr(config, "hidden_size", 0) or 1024)


def _tiled_forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    original = type(self).forward.__get__(self)
    if args or kwargs or x.dim() != 3:
        return original(x, *args, **kwargs)
    params = [p for p in self.parameters() if p.requires_grad]
    return tiled_mlp(original, x, getattr(self, _ATTR), params)


def apply_tiled_mlp(model: nn.Module, tile: int = 0) -> str:
    """Tile every gated MLP of ``model`` over the sequence; returns a one-line note."""
    if tile < 0:
        raise LongqaError(f"kernels.tiled_mlp_tile: expected >= 0 tokens (0 = auto), got {tile}")
    tile = tile or default_tile(model)
    mlps = mlp_modules(model)
    if not mlps:
        return f"tiled MLP skipped: no gated MLP (gate/up/down_proj) in {type(model).__name__}"
    patch_forward(mlps, _ATTR, tile, _tiled_forward)
    return f"tiled MLP on ({len(mlps)} layers, {tile}-token tiles)"


def revert_tiled_mlp(model: nn.Module) -> int:
    """Give every tiled MLP of ``model`` its own forward back; returns how many were reverted."""
    return revert_forward(mlp_modules(model), _ATTR)


def tiled_mlp_tile(model: nn.Module) -> int | None:
    """The tile of the first tiled MLP of ``model``, ``None`` when tiling is off."""
    for m in mlp_modules(model):
        if _ATTR in m.__dict__:
            return int(m.__dict__[_ATTR])
    return None
