"""The memory planner's per-token activation terms, itemised from measurement.

Usage::

    from longqa.plan.terms import ModelShape, layer_bytes_per_token, forward_bytes_per_token
    items = layer_bytes_per_token(recipe, shape)     # {"gradients: ...": bytes per token, ...}

What one checkpointed decoder layer holds per token while gradient checkpointing recomputes it and
back-propagates through it, beyond its stored input, measured on one Llama-3-8B layer prepared as
``build_trainable_model`` prepares it (NF4 linears, which return their input's dtype; fp32 norms and
residual; fp32 LoRA under bf16 autocast; SDPA; fused RoPE) by::

    python benchmarks/bench_layer_memory.py --tokens 256 512 1024 --tile 128

``benchmarks/results/layer_memory.md`` lists the storages alive at the peak; the items below are
those storages, and ``tests/test_plan_measured.py`` re-measures a small layer against them.
The layer has two peaks: the backward one (:func:`layer_bytes_per_token` plus the MLP's
:func:`mlp_bytes_per_token`, untiled or for one tile) and the recompute's attention forward
(:func:`forward_bytes_per_token`: the projections and norm outputs that the attention's Python
frame holds until it returns). Short sequences peak in the backward (a tile's working set is a
constant); long ones in whichever grows faster per token. :func:`longqa.plan.memory.estimate_bytes`
takes the larger.
"""

from __future__ import annotations

from dataclasses import dataclass

from longqa.config.recipe import Recipe


@dataclass
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inter: int
    vocab: int
    head_dim: int = 0
    tied: bool = False

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden // self.heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every LoRA-able linear layer in one decoder layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.inter,
        )
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def residual_bytes(recipe: Recipe) -> int:
    """Bytes per value of the residual stream (the layers' inputs and their gradients).

    ``prepare_model_for_kbit_training`` (4-bit models) casts everything it does not quantise to
    fp32, the embedding included, so a QLoRA model's hidden states are fp32 between layers, unless
    ``memory.bf16_residual`` casts the frozen embedding back and the norms' outputs to bf16;
    otherwise they are in the model's dtype."""
    if recipe.model.dtype == "float32":
        return 4
    if recipe.model.quantization == "nf4" and not recipe.memory.bf16_residual:
        return 4
    return 2


LORA_INPUT_BYTES = 2  # each adapted linear's bf16 input for lora_A (autocast's copy of an fp32 one)
DROPOUT_MASK_BYTES = 1  # LoRA dropout's bool mask per input value (CUDA's native_dropout)
NORM_FP32_BYTES = 4  # a trained RMSNorm saves its fp32 normalised values (not with lean_rmsnorm)
# a tile's backward gradients beyond its intermediates: 13.57 × I·2 per tile token against 12.57
# for the items, at the small shape of tests/test_plan_measured.py (not yet at Llama-3-8B's)
TILED_MLP_EXTRA = 0.1


def norm_in_tiles(recipe: Recipe) -> bool:
    """Whether the post-attention norm runs inside the tiled MLP (``kernels.tiled_mlp_norm``)."""
    return recipe.kernels.tiled_mlp and recipe.kernels.tiled_mlp_norm


def _norm_saved(recipe: Recipe) -> int:
    """Bytes per hidden value one RMSNorm saves beyond its input (transformers' graph): its fp32
    normalised values when trained. None with ``lean_rmsnorm`` or ``memory.bf16_residual``."""
    if recipe.kernels.lean_rmsnorm or lean_norms_by_residual(recipe):
        return 0
    return NORM_FP32_BYTES if recipe.lora.trainable_norms else 0


def lean_norms_by_residual(recipe: Recipe) -> bool:
    """``memory.bf16_residual`` on a 4-bit bf16 model runs the norms lean (``out_dtype``)."""
    return recipe.model.quantization == "nf4" and residual_bytes(recipe) == 2


def lean_dropout(recipe: Recipe) -> bool:
    """Whether LoRA's dropout runs inside ``lora_A`` (``kernels.lean_lora_dropout``)."""
    return recipe.kernels.lean_lora_dropout and recipe.lora.dropout > 0


def _lora_inputs(recipe: Recipe, h: int, q: int, *, saved_input: bool = True) -> float:
    """q, k, v, o's saved LoRA inputs: bf16 dropout outputs (or autocast copies) and masks.
    With the lean dropout: bit-packed masks, and q/k/v's one shared input (``saved_input``: in
    the backward; in the forward it is the norm output the layer holds anyway); ``o_proj``'s
    input is SDPA's saved output."""
    if lean_dropout(recipe):
        return (3 * h + q) / 8 + (residual_bytes(recipe) * h if saved_input else 0)
    if recipe.lora.dropout > 0:
        return (LORA_INPUT_BYTES + DROPOUT_MASK_BYTES) * (3 * h + q)
    if residual_bytes(recipe) == LORA_INPUT_BYTES:  # no dropout, no cast: q/k/v share the input
        return LORA_INPUT_BYTES * (h + q)
    return LORA_INPUT_BYTES * (3 * h + q)


def layer_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token of one layer's backward peak, beyond its stored input and apart from the
    MLP's intermediates (:func:`mlp_bytes_per_token`), itemised."""
    h, r = shape.hidden, residual_bytes(recipe)
    if norm_in_tiles(recipe):  # the MLP saves the residual the norm saved; norm output per tile
        return {
            "gradients: layer output, MLP path, residual sum": 3 * r * h,
            "trained input RMSNorm's fp32 normalised values": _norm_saved(recipe) * h,
            **_attention_side(recipe, shape),
        }
    return {
        "gradients: layer output, MLP input, residual sum": 3 * r * h,
        "MLP input (post-attention norm output)": r * h,
        "trained RMSNorms' fp32 normalised values": 2 * _norm_saved(recipe) * h,
        **_attention_side(recipe, shape),
    }


def _attention_side(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    h, d = shape.hidden, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    return {
        "LoRA inputs of q, k, v, o (+ dropout masks)": _lora_inputs(recipe, h, q),
        "attention: bf16 q, k, v, output; log-sum-exp": 2 * (q + 2 * kv) + 2 * q + 4 * shape.heads,
        "rotary cos/sin": 2 * d * residual_bytes(recipe),
        "LoRA A outputs of q, k, v, o (bf16, rank r)": 4 * 2 * recipe.lora.r,
        "norms' 1/rms, position ids": 2 * 4 + 8,
    }


def forward_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token alive in the recompute's attention forward, at o_proj's LoRA (the frame of
    transformers' attention still holds q, k, v and the decoder layer the norm's output), beside
    the incoming gradient; itemised like :func:`layer_bytes_per_token`. With ``kernels.rope`` an
    fp32 q and k leave the RoPE dispatcher already in bf16 (:func:`longqa.patch.kernels.
    attention_dtype`), so the frame holds those instead of fp32 tensors plus SDPA's copies."""
    h, d = shape.hidden, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    r = residual_bytes(recipe)
    rotated = 2 if recipe.kernels.rope else r  # the fused RoPE hands q, k over in bf16
    return {
        "incoming gradient (layer output)": r * h,
        "input norm output (+ its saved values)": (r + _norm_saved(recipe)) * h,
        "q, k (after RoPE), v projections": rotated * (q + kv) + r * kv,
        "SDPA's bf16 copies of q, k, v": 2 * (q + kv) * (rotated > 2) + 2 * kv * (r > 2),
        "SDPA output (bf16), log-sum-exp": 2 * q + 4 * shape.heads,
        "rotary cos/sin": 2 * d * r,
        "LoRA inputs of q, k, v, o (+ dropout masks)": _lora_inputs(
            recipe, h, q, saved_input=False
        ),
        "o_proj: base output copy, LoRA output, scaled (bf16)": 3 * 2 * h,
        "LoRA A outputs of q, k, v, o (bf16, rank r)": 4 * 2 * recipe.lora.r,
    }


def attention_backward_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token alive in the attention's backward, where a gradient is summed from three
    parts (a base linear's, the LoRA path's, their running sum) beside the incoming and residual
    gradients: the larger of two moments. It binds only when the LoRA inputs are small
    (``kernels.lean_lora_dropout``; otherwise they are freed as q, k, v back-propagate and the
    forward peak is higher, measured); empty otherwise.

    * ``o_proj``'s backward: the gradient of SDPA's output in parts, SDPA's saved q, k, v, output
      and log-sum-exp still alive (its backward comes next);
    * q/k/v's backward, after SDPA's: the gradient of their shared input in parts, beside the
      gradients of q and k (v's is consumed first), in the stream's dtype after RoPE.

    Measured at the small shape of ``tests/test_plan_measured.py`` (T 2,048 → 4,096): fp32
    stream 2,106–2,140 B/token against 2,144 planned (q/k/v's moment), bf16 stream 1,333–1,364
    against 1,392 (``o_proj``'s); at Llama-3-8B's shape with every switch 14.76 and 8.78 H·2
    against 14.88 and 8.84 (``benchmarks/results/layer_memory_long_modes.md``)."""
    if not lean_dropout(recipe):
        return {}
    h, d = shape.hidden, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    r = residual_bytes(recipe)
    common = {
        "gradients: layer output, residual sum": 2 * r * h,
        "LoRA inputs (the norm output, packed masks)": _lora_inputs(recipe, h, q),
        "rotary cos/sin": 2 * d * r,
    }
    o_proj = {
        **common,
        "o_proj: gradient of SDPA's output, in three parts (bf16)": 3 * 2 * q,
        "SDPA's saved q, k, v (bf16), output, log-sum-exp": 2 * (2 * q + 2 * kv) + 4 * shape.heads,
        "LoRA A outputs of q, k, v, o (bf16, rank r)": 4 * 2 * recipe.lora.r,
    }
    qkv = {
        **common,
        "q/k/v: gradient of their input, in three parts": 3 * r * h,
        "gradients of q and k (after RoPE)": r * (q + kv),
        "LoRA A outputs of q, k (bf16, rank r)": 2 * 2 * recipe.lora.r,
    }
    return max(o_proj, qkv, key=lambda items: sum(items.values()))


def mlp_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token of the gated MLP's intermediates at the layer's peak (untiled), itemised."""
    h, i = shape.hidden, shape.inter
    r = residual_bytes(recipe)  # a 4-bit linear returns its input's dtype: fp32 under QLoRA
    drop = DROPOUT_MASK_BYTES if recipe.lora.dropout > 0 else 0
    copy = LORA_INPUT_BYTES if r > LORA_INPUT_BYTES else 0  # autocast's bf16 copy of an fp32 input
    norm: dict[str, float] = {}
    if norm_in_tiles(recipe):  # the post-attention norm's output and gradient, per tile token
        norm = {"post-attention norm output, its gradient": (2 * r + _norm_saved(recipe)) * h}
    if lean_dropout(recipe):  # inputs kept anyway (the tile's input, the product); packed masks
        return {
            **norm,
            "gate, up, act(gate), act(gate)·up": 4 * r * i,
            "gate/up/down dropout masks (bit-packed)": (2 * h + i) / 8,
            "LoRA A outputs of gate, up, down (bf16, rank r)": 3 * 2 * recipe.lora.r,
        }
    return {
        **norm,
        "gate, up, act(gate), act(gate)·up": 4 * r * i,
        "down_proj LoRA input (dropout output, mask, bf16 copy)": (r + drop + copy) * i
        if drop
        else copy * i,
        "gate/up LoRA inputs (+ dropout masks)": 2 * (LORA_INPUT_BYTES + drop) * h,
        "LoRA A outputs of gate, up, down (bf16, rank r)": 3 * 2 * recipe.lora.r,
    }
