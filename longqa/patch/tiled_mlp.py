"""Run a loaded model's decoder MLPs over sequence tiles, reversibly (``kernels.tiled_mlp``).

Usage::

    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp
    note = apply_tiled_mlp(model, tile=0)   # "tiled MLP on (30 layers, 576-token tiles)"
    note = apply_tiled_mlp(model, with_norm=True)   # + the post-attention RMSNorm inside the tiles
    ...                                     # training: MLP intermediates are O(tile), not O(seq)
    revert_tiled_mlp(model)                 # the model's own MLP (and norm) forward again

Every gated MLP of the model (a module whose class name ends in ``MLP`` with ``gate_proj``,
``up_proj`` and ``down_proj`` children: Llama, Qwen2, Qwen3, Mistral, …) gets an instance-level
``forward`` that calls :func:`longqa.ops.tiled_mlp.tiled_mlp` around the class's own forward, so
peft's LoRA layers inside it and bitsandbytes' 4-bit linears run unchanged. ``tile=0`` picks the
hidden size as the tile (ALST's rule: ``ceil(seq / hidden)`` shards, so one tile's ``[tile,
intermediate]`` block is the size of one MLP weight matrix). Library source is never edited;
:func:`revert_tiled_mlp` deletes the instance attributes.

``with_norm`` (``kernels.tiled_mlp_norm``) also moves each decoder layer's
``post_attention_layernorm`` into its MLP's tiles: the norm's instance ``forward`` passes its input
through, and the MLP computes ``mlp(norm(h))`` tile by tile with the norm's forward beneath that
pass-through (peft's ``modules_to_save`` copy when the norms are trained; the lean or bf16-residual
forward when those are on). RMSNorm acts on each token, so the output is the same; the tiled
function then saves the residual ``h`` (which the norm saved anyway) instead of the norm's output,
and the norm's output and its gradient exist for one tile at a time: one ``[B, T, H]`` tensor fewer
at a layer's backward peak (``tests/test_plan_measured.py``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from longqa.core.errors import LongqaError
from longqa.ops.tiled_mlp import tiled_mlp
from longqa.patch.forward import pass_through, patch_forward, revert_forward, underlying_forward

_ATTR = "_longqa_tiled_mlp"
_NORM_ATTR = "_longqa_tiled_mlp_norm"  # on an MLP: the norm it applies inside its tiles
_PASS_ATTR = "_longqa_norm_in_tiled_mlp"  # on a norm: it passes its input through
MLP_CHILDREN = ("gate_proj", "up_proj", "down_proj")


def mlp_modules(model: nn.Module) -> list[nn.Module]:
    """The gated MLP modules of ``model`` (peft wrappers included) in model order."""
    found = []
    for module in model.modules():
        if type(module).__name__.endswith("MLP") and all(hasattr(module, c) for c in MLP_CHILDREN):
            found.append(module)
    return found


def norm_mlp_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(post_attention_layernorm, mlp)`` of every decoder layer whose MLP is gated."""
    gated = {id(m) for m in mlp_modules(model)}
    return [
        (layer.post_attention_layernorm, layer.mlp)
        for layer in model.modules()
        if id(getattr(layer, "mlp", None)) in gated
        and isinstance(getattr(layer, "post_attention_layernorm", None), nn.Module)
    ]


def default_tile(model: nn.Module) -> int:
    """The hidden size from the model's config (ALST's tile), else 1024 tokens."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(getattr(config, "hidden_size", 0) or 1024)


def _tiled_forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    mlp = type(self).forward.__get__(self)
    params = [p for p in self.parameters() if p.requires_grad]
    norm = self.__dict__.get(_NORM_ATTR)
    if norm is None:
        fn = mlp
    else:
        norm_forward = underlying_forward(norm, _PASS_ATTR)  # the norm's, not the pass-through

        def fn(t: Tensor, *a: Any, **k: Any) -> Tensor:
            return mlp(norm_forward(t), *a, **k)

        params += [p for p in norm.parameters() if p.requires_grad]
    if args or kwargs or x.dim() != 3:
        return fn(x, *args, **kwargs)
    return tiled_mlp(fn, x, self.__dict__[_ATTR], params)


def apply_tiled_mlp(model: nn.Module, tile: int = 0, *, with_norm: bool = False) -> str:
    """Tile every gated MLP of ``model`` over the sequence (with each layer's post-attention norm
    inside the tiles when ``with_norm``); returns a one-line note."""
    if tile < 0:
        raise LongqaError(f"kernels.tiled_mlp_tile: expected >= 0 tokens (0 = auto), got {tile}")
    tile = tile or default_tile(model)
    mlps = mlp_modules(model)
    if not mlps:
        return f"tiled MLP skipped: no gated MLP (gate/up/down_proj) in {type(model).__name__}"
    pairs = norm_mlp_pairs(model) if with_norm else []
    if with_norm and len(pairs) != len(mlps):
        raise LongqaError(
            f"kernels.tiled_mlp_norm: {type(model).__name__} has {len(mlps)} gated MLPs but "
            f"{len(pairs)} decoder layers with a post_attention_layernorm before one"
        )
    patch_forward(mlps, _ATTR, tile, _tiled_forward)
    for norm, mlp in pairs:
        mlp.__dict__[_NORM_ATTR] = norm  # a plain reference: not registered as a submodule
    patch_forward([norm for norm, _ in pairs], _PASS_ATTR, True, pass_through)  # MLP applies it
    fused = ", post-attention norm inside" if pairs else ""
    return f"tiled MLP on ({len(mlps)} layers, {tile}-token tiles{fused})"


def revert_tiled_mlp(model: nn.Module) -> int:
    """Give every tiled MLP (and norm) of ``model`` its own forward back; returns how many MLPs
    were reverted."""
    revert_forward(model.modules(), _PASS_ATTR)
    mlps = mlp_modules(model)
    for m in mlps:
        m.__dict__.pop(_NORM_ATTR, None)
    return revert_forward(mlps, _ATTR)


def tiled_mlp_tile(model: nn.Module) -> int | None:
    """The tile of the first tiled MLP of ``model``, ``None`` when tiling is off."""
    for m in mlp_modules(model):
        if _ATTR in m.__dict__:
            return int(m.__dict__[_ATTR])
    return None


def norm_in_tiled_mlp(model: nn.Module) -> bool:
    """Whether the post-attention norms of ``model`` run inside its tiled MLPs."""
    return any(_NORM_ATTR in m.__dict__ for m in mlp_modules(model))
