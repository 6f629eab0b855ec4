"""GPU memory planner for a recipe: will one training step at the recipe's length fit?

Usage::

    from longqa.train.plan import plan_memory, render_plan
    plan = plan_memory(recipe, gpu_mem_gb=80)      # MemoryPlan: items (GB), total, fits, max_fit
    render_plan(plan, console)

The estimate (bytes) adds, for one micro-batch of ``B × T`` tokens:

* 4-bit weights: 0.5 B/param for every decoder linear layer plus NF4 constants (an fp32 absmax per
  64 weights, or ~1/64 B with double quantization), QLoRA https://arxiv.org/abs/2305.14314; the
  embedding and LM head stay unquantized (fp32 after ``prepare_model_for_kbit_training``).
* LoRA + optimizer: trainable params in fp32, their gradients, and Adam moments (8 B/param, or
  2 B/param for 8-bit optimizers); norms trained alongside.
* checkpointed activations: each layer's input ``B·T·H`` kept per layer (on CPU when activation
  offloading is on: two layers' inputs stay in flight), in the residual stream's dtype: fp32 for a 4-bit model,
  whose embedding ``prepare_model_for_kbit_training`` upcasts (:func:`residual_bytes`).
* one layer's recompute + backward peak, *measured* (``benchmarks/bench_layer_memory.py``, results
  in ``benchmarks/results/layer_memory.md``) and itemised per token by :func:`layer_bytes_per_token`
  (boundary gradients, norms' fp32 values, LoRA inputs and dropout masks, SDPA's q/k/v/output,
  rotary tables: ≈ 20.7 × ``H·2`` bytes a token for Llama-3-8B, not counting the MLP) and
  :func:`mlp_bytes_per_token` (gate, up, act, product in fp32, LoRA inputs). With
  ``kernels.tiled_mlp`` the MLP's items exist for one tile of tokens (ALST,
  https://arxiv.org/abs/2506.13996); the tile defaults to ``H`` tokens. ``kernels.lean_rmsnorm``
  removes the trained norms' fp32 normalised values.
* attention: flash/SDPA kernels keep O(T) state (in the layer's items); eager attention holds
  ``B·heads·T²`` scores+probs.
* loss (:func:`loss_bytes`): chunked cross-entropy holds ``chunk × V`` fp32 logits and their
  gradient; without it the full ``B·T × V`` logits (+ fp32 copy + gradient) exist at once; both
  with the scored hidden states, their gradient and the final norm's saved tensors.
  ``train.loss_chunk_size: 0`` chooses the chunk from memory: the largest multiple of 256 tokens
  whose two fp32 ``chunk × V`` blocks fit in 1 GiB
  (:func:`longqa.ops.causal_lm.loss_chunk_from_memory`). The loss is freed before the last layer
  is recomputed, so the step's peak holds the larger of the two: only the loss's excess counts.
* CUDA context, workspace and allocator slack: 1 GB + 5 %.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.config.recipe import Recipe, recipe_max_length
from longqa.core.errors import LongqaError
from longqa.ops.causal_lm import loss_chunk_from_memory

GB = 2**30

# Shapes of the recipes' models, for planning without the weights on disk.
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "qwen-14b": dict(hidden=5120, layers=40, heads=40, kv_heads=40, inter=13696, vocab=152064),
    "qwen-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=151936),
    "llama-2-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000),
    "llama-2-13b": dict(hidden=5120, layers=40, heads=40, kv_heads=40, inter=13824, vocab=32000),
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256),
    "llama-3.1-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256),
    "smollm2-135m": dict(
        hidden=576, layers=30, heads=9, kv_heads=3, inter=1536, vocab=49152, tied=True
    ),
}


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


@dataclass
class MemoryPlan:
    model: str
    seq_len: int
    batch: int
    gpu_mem_gb: float
    items: dict[str, float] = field(default_factory=dict)
    max_fit_len: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return sum(self.items.values())

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.gpu_mem_gb


def _norm(name: str) -> str:
    return name.lower().replace("meta-llama-3", "llama-3").replace("_", "-")


def _shape_from_config(path: str) -> ModelShape:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # corrupt JSON, unknown model_type, missing fields
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cfg_file = Path(path) / "config.json"
        raise LongqaError(f"{cfg_file}: cannot read the model config ({first})") from None
    tc = cfg.get_text_config()
    return ModelShape(
        hidden=tc.hidden_size,
        layers=tc.num_hidden_layers,
        heads=tc.num_attention_heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
        inter=tc.intermediate_size,
        vocab=tc.vocab_size,
        head_dim=getattr(tc, "head_dim", None) or 0,
        tied=bool(getattr(tc, "tie_word_embeddings", False)),
    )


def model_shape(recipe: Recipe) -> tuple[ModelShape, str]:
    """Shape from the model's config on disk (prepared aliases, local folders), else from
    :data:`KNOWN_SHAPES` by name (a GGUF is not converted, nor a hub model fetched, just to plan)."""
    from longqa.models.loading import cached_hub_snapshot, is_prepared, resolve_for_loading

    name = recipe.model.name
    on_disk = is_prepared(name) or ("/" in name and cached_hub_snapshot(name) is not None)
    if on_disk:
        return _shape_from_config(resolve_for_loading(name, recipe.model.layout)), "model config"
    key = _norm(name)
    for known, dims in sorted(KNOWN_SHAPES.items(), key=lambda kv: -len(kv[0])):
        if known in key:
            return ModelShape(**dims), f"built-in shape '{known}'"
    raise LongqaError(
        f"--plan: cannot find the shape of model '{name}' (not on disk and not one of "
        f"{', '.join(KNOWN_SHAPES)})"
    )


def loss_chunk_size(recipe: Recipe, vocab: int) -> int:
    """The recipe's ``train.loss_chunk_size``, or the one chosen from memory when it is 0."""
    return recipe.train.loss_chunk_size or loss_chunk_from_memory(vocab)


def residual_bytes(recipe: Recipe) -> int:
    """Bytes per value of the residual stream (the layers' inputs and their gradients).

    ``prepare_model_for_kbit_training`` (4-bit models) casts everything it does not quantise to
    fp32, the embedding included, so a QLoRA model's hidden states are fp32 between layers;
    otherwise they are in the model's dtype."""
    if recipe.model.quantization == "nf4" or recipe.model.dtype == "float32":
        return 4
    return 2


# What one checkpointed decoder layer holds, per token, at the peak of its recompute + backward,
# beyond its stored input. Measured on one Llama-3-8B layer prepared as build_trainable_model
# prepares it (NF4 linears, which return their input's dtype; fp32 norms and residual; fp32 LoRA
# under bf16 autocast; SDPA; fused RoPE) by
#   python benchmarks/bench_layer_memory.py --tokens 256 512 1024 --tile 128
# (benchmarks/results/layer_memory.md lists the storages alive at the peak; the items below are
# those storages, tests/test_train_plan_measured.py re-measures a small layer against them).
LORA_INPUT_BYTES = 2  # each adapted linear's own bf16 copy of its input for lora_A (autocast)
DROPOUT_MASK_BYTES = 1  # LoRA dropout's bool mask per input value (CUDA's native_dropout)
NORM_FP32_BYTES = 4  # a trained RMSNorm saves its fp32 normalised values (not with lean_rmsnorm)
# a tile's backward gradients beyond its intermediates: 13.57 × I·2 per tile token against 12.57
# for the items, at the small shape of tests/test_train_plan_measured.py (not yet at Llama-3-8B's)
TILED_MLP_EXTRA = 0.1


def layer_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token of one layer's recompute + backward peak, beyond its stored input and
    apart from the MLP's intermediates (:func:`mlp_bytes_per_token`), itemised."""
    h, d = shape.hidden, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    r = residual_bytes(recipe)
    drop = DROPOUT_MASK_BYTES if recipe.lora.dropout > 0 else 0
    norms = recipe.lora.trainable_norms and not recipe.kernels.lean_rmsnorm
    return {
        "gradients: layer output, MLP input, residual sum": 3 * r * h,
        "MLP input (post-attention norm output)": r * h,
        "trained RMSNorms' fp32 normalised values": 2 * NORM_FP32_BYTES * h if norms else 0,
        "LoRA inputs of q, k, v, o (+ dropout masks)": (LORA_INPUT_BYTES + drop) * (3 * h + q),
        "attention: bf16 q, k, v, output; log-sum-exp": 2 * (q + 2 * kv) + 2 * q + 4 * shape.heads,
        "rotary cos/sin": 2 * d * r,
        "LoRA A outputs of q, k, v, o (bf16, rank r)": 4 * 2 * recipe.lora.r,
        "norms' 1/rms, position ids": 2 * 4 + 8,
    }


def mlp_bytes_per_token(recipe: Recipe, shape: ModelShape) -> dict[str, float]:
    """Bytes per token of the gated MLP's intermediates at the layer's peak (untiled), itemised."""
    h, i = shape.hidden, shape.inter
    r = residual_bytes(recipe)  # a 4-bit linear returns its input's dtype: fp32 under QLoRA
    drop = DROPOUT_MASK_BYTES if recipe.lora.dropout > 0 else 0
    return {
        "gate, up, act(gate), act(gate)·up": 4 * r * i,
        "down_proj LoRA input (dropout output, mask, bf16 copy)": (r + drop + LORA_INPUT_BYTES) * i
        if drop
        else LORA_INPUT_BYTES * i,
        "gate/up LoRA inputs (+ dropout masks)": 2 * (LORA_INPUT_BYTES + drop) * h,
        "LoRA A outputs of gate, up, down (bf16, rank r)": 3 * 2 * recipe.lora.r,
    }


def estimate_bytes(
    recipe: Recipe, shape: ModelShape, seq_len: int, *, on_gpu: bool = True
) -> dict[str, float]:
    """Itemised bytes for one training step of ``micro_batch_size × seq_len`` tokens."""
    tc, lc = recipe.train, recipe.lora
    tokens = tc.micro_batch_size * seq_len
    act = 4 if recipe.model.dtype == "float32" else 2
    res = residual_bytes(recipe)
    per_layer = shape.linear_shapes()
    lin_params = shape.layers * sum(i * o for i, o in per_layer)
    if recipe.model.quantization == "nf4":
        const = 1 / 64 + 4 / (64 * 256) if recipe.model.double_quant else 4 / 64
        weights = lin_params * (0.5 + const)
    else:
        weights = lin_params * act
    emb = shape.vocab * shape.hidden * (1 if shape.tied else 2) * 4
    lora = shape.layers * sum(lc.r * (i + o) for i, o in per_layer)
    if lc.trainable_norms:
        lora += (2 * shape.layers + 1) * shape.hidden
    opt = 2 if "8bit" in tc.optim else 8
    layer = tokens * sum(layer_bytes_per_token(recipe, shape).values())
    mlp_token = sum(mlp_bytes_per_token(recipe, shape).values())
    mlp = tokens * mlp_token
    if recipe.kernels.tiled_mlp:
        tile = min(recipe.kernels.tiled_mlp_tile or shape.hidden, tokens)
        mlp = tile * mlp_token * (1 + TILED_MLP_EXTRA)
    stored = shape.layers * tokens * shape.hidden * res
    if recipe.memory.offload_activations and on_gpu:
        stored = 2 * tokens * shape.hidden * res  # two layers in flight on the GPU
    if not tc.gradient_checkpointing:  # every layer keeps what one recompute would hold
        stored = shape.layers * (tokens * shape.hidden * res + layer + mlp)
    if recipe.model.attn_implementation == "eager":
        attn = 2 * tc.micro_batch_size * shape.heads * seq_len * seq_len * act
    else:
        attn = 0.0  # flash/SDPA: O(T) state, in the layer's items (log-sum-exp)
    items = {
        "4-bit weights" if recipe.model.quantization == "nf4" else "weights": weights,
        "embeddings + LM head": emb,
        "LoRA + grads + optimizer": lora * (4 + 4 + opt),
        "checkpointed activations": stored,
        "layer recompute": layer,
        "MLP recompute (tiled)" if recipe.kernels.tiled_mlp else "MLP recompute": mlp,
        "attention": attn,
        # the loss runs after the last layer's forward and is freed before its recompute: the
        # step's peak holds one of the two, so only the loss's excess over the layer counts
        "loss, beyond the layer peak": max(
            0.0, loss_bytes(recipe, shape, tokens) - layer - mlp - attn
        ),
    }
    subtotal = sum(items.values())
    items["CUDA context + slack"] = 1 * GB + 0.05 * subtotal
    return items


def loss_bytes(recipe: Recipe, shape: ModelShape, tokens: int) -> float:
    """What the loss holds at its peak: the final norm's saved input (and fp32 normalised values
    when it is trained without ``lean_rmsnorm``), the scored hidden states and their gradient
    (in the residual dtype, as the final norm's output), and the logits of one chunk (or all)."""
    h, v = shape.hidden, shape.vocab
    res = residual_bytes(recipe)
    norm = NORM_FP32_BYTES if recipe.lora.trainable_norms and not recipe.kernels.lean_rmsnorm else 0
    held = tokens * h * (res + norm + 2 * res)
    if recipe.kernels.chunked_ce:
        chunk = min(loss_chunk_size(recipe, v), tokens)
        return held + 2 * chunk * v * 4
    act = 4 if recipe.model.dtype == "float32" else 2
    return held + tokens * v * (act + 4 + 4)


def plan_memory(recipe: Recipe, gpu_mem_gb: float = 80.0, seq_len: int | None = None) -> MemoryPlan:
    """Estimate the peak GPU memory of one step at the recipe's longest length."""
    shape, source = model_shape(recipe)
    length = seq_len or recipe_max_length(recipe)
    items = estimate_bytes(recipe, shape, length)
    plan = MemoryPlan(
        model=recipe.model.name,
        seq_len=length,
        batch=recipe.train.micro_batch_size,
        gpu_mem_gb=gpu_mem_gb,
        items={k: v / GB for k, v in items.items()},
        notes=[f"shape from {source}: hidden {shape.hidden}, {shape.layers} layers, "
               f"{shape.heads}/{shape.kv_heads} heads, vocab {shape.vocab}"],
    )  # fmt: skip
    if recipe.kernels.chunked_ce:
        chunk = loss_chunk_size(recipe, shape.vocab)
        how = "chosen from memory" if not recipe.train.loss_chunk_size else "train.loss_chunk_size"
        plan.notes.append(f"loss chunk: {chunk:,} tokens ({how})")
    if recipe.kernels.tiled_mlp:
        tile = recipe.kernels.tiled_mlp_tile or shape.hidden
        plan.notes.append(f"tiled MLP: {tile:,}-token tiles")
    if recipe.kernels.lean_rmsnorm:
        plan.notes.append("lean RMSNorm: norms save their input and 1/rms, not fp32 values")
    loss = loss_bytes(recipe, shape, recipe.train.micro_batch_size * length)
    plan.notes.append(
        f"loss at its peak: {loss / GB:.2f} GB, freed before the layers' backward "
        "(only its excess over the layer recompute counts)"
    )
    plan.max_fit_len = longest_fitting_length(recipe, shape, gpu_mem_gb)
    return plan


def longest_fitting_length(recipe: Recipe, shape: ModelShape, gpu_mem_gb: float) -> int | None:
    """Longest length (to 256 tokens) whose estimate fits ``gpu_mem_gb``; None below 1024."""
    return longest_length(
        lambda n: sum(estimate_bytes(recipe, shape, n).values()) / GB <= gpu_mem_gb
    )


def longest_length(fits: Callable[[int], bool], cap: int = 2**26) -> int | None:
    """Longest length (to 256 tokens, at most ``cap``) for which ``fits``: doubling, then
    bisection; None when even 1024 tokens do not fit."""
    if not fits(1024):
        return None
    lo, hi = 1024, 2048
    while fits(hi) and hi < cap:
        lo, hi = hi, hi * 2
    while hi - lo > 256:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def render_plan(plan: MemoryPlan, console: Any) -> None:
    """Print the plan as a rich table with a fits / does-not-fit verdict."""
    from rich.table import Table

    table = Table(title=f"memory plan: {plan.model}, {plan.batch} × {plan.seq_len:,} tokens")
    table.add_column("item")
    table.add_column("GB", justify="right")
    for k, v in plan.items.items():
        table.add_row(k, f"{v:.2f}")
    table.add_row("[bold]total[/]", f"[bold]{plan.total_gb:.2f}[/]")
    console.print(table)
    for n in plan.notes:
        console.print(n, highlight=False)
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    console.print(
        f"{verdict} in a {plan.gpu_mem_gb:g} GB GPU (estimated {plan.total_gb:.1f} GB)",
        highlight=False,
    )
    if plan.max_fit_len:
        console.print(f"longest length that fits: ~{plan.max_fit_len:,} tokens", highlight=False)
