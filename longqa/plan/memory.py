"""GPU memory planner for a recipe: will one training step at the recipe's length fit?

Usage::

    from longqa.plan.memory import plan_memory, render_plan
    plan = plan_memory(recipe, gpu_mem_gb=80)      # MemoryPlan: items (GB), total, fits, max_fit
    render_plan(plan, console)

The estimate (bytes) adds, for one micro-batch of ``B × T`` tokens:

* 4-bit weights: 0.5 B/param for every decoder linear layer plus NF4 constants (an fp32 absmax per
  64 weights, or ~1/64 B with double quantization), QLoRA https://arxiv.org/abs/2305.14314; the
  embedding and LM head stay unquantized (fp32 after ``prepare_model_for_kbit_training``; bf16
  again with ``memory.bf16_residual``).
* LoRA + optimizer: trainable params in fp32, their gradients, and Adam moments (8 B/param, or
  2 B/param for 8-bit optimizers); norms trained alongside.
* checkpointed activations: each layer's input ``B·T·H`` kept per layer (on CPU when activation
  offloading is on: two layers' inputs stay in flight), in the residual stream's dtype: fp32 for a
  4-bit model, whose embedding ``prepare_model_for_kbit_training`` upcasts, unless
  ``memory.bf16_residual`` (:func:`residual_bytes`).
* one layer's recompute + backward peak, *measured* (the terms: :mod:`longqa.plan.terms`) (``benchmarks/bench_layer_memory.py``, results
  in ``benchmarks/results/layer_memory.md``) and itemised per token by :func:`layer_bytes_per_token`
  (boundary gradients, norms' fp32 values, LoRA inputs and dropout masks, SDPA's q/k/v/output,
  rotary tables: ≈ 20.7 × ``H·2`` bytes a token for Llama-3-8B, not counting the MLP) and
  :func:`mlp_bytes_per_token` (gate, up, act, product in fp32, LoRA inputs). With
  ``kernels.tiled_mlp`` the MLP's items exist for one tile of tokens (ALST,
  https://arxiv.org/abs/2506.13996); the tile defaults to ``H`` tokens. ``kernels.lean_rmsnorm``
  removes the trained norms' fp32 normalised values; the recompute's attention forward
  (:func:`forward_bytes_per_token`), or with ``kernels.lean_lora_dropout`` the attention's backward
  (:func:`attention_backward_bytes_per_token`), counts where it exceeds that; ``kernels.tiled_mlp_norm`` moves the
  post-attention norm into the MLP's tiles (its output, which the MLP saved, goes from the layer's
  items to the tile's).
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
from longqa.plan.terms import (
    NORM_FP32_BYTES,
    TILED_MLP_EXTRA,
    ModelShape,
    attention_backward_bytes_per_token,
    forward_bytes_per_token,
    layer_bytes_per_token,
    lean_norms_by_residual,
    mlp_bytes_per_token,
    norm_in_tiles,
    residual_bytes,
)

__all__ = [
    "TILED_MLP_EXTRA",
    "MemoryPlan",
    "attention_backward_bytes_per_token",
    "ModelShape",
    "estimate_bytes",
    "forward_bytes_per_token",
    "layer_bytes_per_token",
    "loss_bytes",
    "mlp_bytes_per_token",
    "model_shape",
    "plan_memory",
    "render_plan",
    "residual_bytes",
]

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
    from longqa.models.checkpoints import cached_hub_snapshot, is_prepared, resolve_for_loading

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
    emb = shape.vocab * shape.hidden * (1 if shape.tied else 2) * (4 if res == 4 else act)
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
    # the attention forward (or, lean dropout, backward) peaks apart from the backward: its excess
    forward = tokens * max(
        sum(forward_bytes_per_token(recipe, shape).values()),
        sum(attention_backward_bytes_per_token(recipe, shape).values()),
    )
    attention_excess = max(0.0, forward - layer - mlp) if tc.gradient_checkpointing else 0.0
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
        "recompute's attention forward/backward, beyond": attention_excess,
        "attention": attn,
        # the loss runs after the last layer's forward and is freed before its recompute: the
        # step's peak holds one of the two, so only the loss's excess over the layer counts
        "loss, beyond the layer peak": max(
            0.0, loss_bytes(recipe, shape, tokens) - layer - mlp - attention_excess - attn
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
    lean = recipe.kernels.lean_rmsnorm or lean_norms_by_residual(recipe)
    norm = NORM_FP32_BYTES if recipe.lora.trainable_norms and not lean else 0
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
    if norm_in_tiles(recipe):
        plan.notes.append("post-attention RMSNorm inside the MLP's tiles")
    if recipe.memory.bf16_residual:
        stream = "bf16" if residual_bytes(recipe) == 2 else "fp32 (bf16_residual needs bf16)"
        plan.notes.append(f"residual stream: {stream}")
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
