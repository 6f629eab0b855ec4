"""Memory plan on N GPUs: per-GPU peak and longest trainable context for each launch mode.

Usage::

    from longqa.plan.parallel import plan_parallel, render_parallel_plan
    rows = plan_parallel(recipe, gpus=8, gpu_mem_gb=80)
    render_parallel_plan(rows, console)        # `longqa train --plan --gpus 8`

It reuses the single-GPU estimate (:func:`longqa.plan.memory.estimate_bytes`) and changes what
each mode divides by N:

- ``ddp``: nothing (every GPU holds the model and a whole sequence); more GPUs, more throughput.
- ``fsdp`` / ``deepspeed`` (ZeRO-3): weights, embeddings, adapter, gradients and optimizer states
  are sharded (÷ N); activations are not. Parameters are gathered one layer at a time, so one
  layer's full weights are added back.
- ``ulysses`` (DeepSpeed Ulysses on ZeRO-3): as ZeRO-3, and each GPU holds ``T / N`` tokens of the
  sequence, so activations, recompute, attention state and the loss shrink ÷ N; the all-to-all
  adds q, k, v and the attention output of one layer for the local tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longqa.config.launch_modes import LAUNCH_MODES
from longqa.config.recipe import Recipe, recipe_max_length
from longqa.plan.memory import GB, ModelShape, estimate_bytes, longest_length, model_shape

_SHARDED = {"4-bit weights", "weights", "embeddings + LM head", "LoRA + grads + optimizer"}
_SLACK = "CUDA context + slack"


@dataclass
class ParallelPlanRow:
    mode: str
    gpus: int
    seq_len: int
    per_gpu_gb: float
    gpu_mem_gb: float
    max_fit_len: int | None

    @property
    def fits(self) -> bool:
        return self.per_gpu_gb <= self.gpu_mem_gb


def per_gpu_bytes(recipe: Recipe, shape: ModelShape, seq_len: int, mode: str, gpus: int) -> float:
    """Estimated peak bytes on one GPU for one step of ``seq_len`` tokens under ``mode``."""
    if mode not in LAUNCH_MODES:
        raise ValueError(f"unknown launch mode {mode}")
    seq_split = gpus if LAUNCH_MODES[mode].sequence_parallel else 1
    local_len = -(-seq_len // seq_split)  # ceil
    items = estimate_bytes(recipe, shape, local_len)
    items.pop(_SLACK)
    if mode != "ddp":
        for key in _SHARDED & items.keys():
            items[key] /= gpus
        # ZeRO-3 / FSDP gather one layer's parameters at a time
        layer_weights = (items.get("4-bit weights", 0) + items.get("weights", 0)) * gpus
        items["gathered layer"] = layer_weights / shape.layers
    if seq_split > 1:
        act = 4 if recipe.model.dtype == "float32" else 2
        tokens = recipe.train.micro_batch_size * local_len
        q = shape.heads * shape.head_dim
        kv = shape.kv_heads * shape.head_dim
        items["all-to-all buffers"] = 2 * tokens * (2 * q + 2 * kv) * act
    subtotal = sum(items.values())
    return subtotal + 1 * GB + 0.05 * subtotal


def plan_parallel(
    recipe: Recipe, gpus: int, gpu_mem_gb: float = 80.0, seq_len: int | None = None
) -> list[ParallelPlanRow]:
    """One row per launch mode: per-GPU GB at the recipe's length and the longest that fits."""
    shape, _ = model_shape(recipe)
    length = seq_len or recipe_max_length(recipe)
    rows = []
    for mode, spec in LAUNCH_MODES.items():
        if spec.sequence_parallel and gpus < 2:
            continue
        rows.append(
            ParallelPlanRow(
                mode=mode,
                gpus=gpus,
                seq_len=length,
                per_gpu_gb=per_gpu_bytes(recipe, shape, length, mode, gpus) / GB,
                gpu_mem_gb=gpu_mem_gb,
                max_fit_len=longest_length(
                    lambda n, m=mode: per_gpu_bytes(recipe, shape, n, m, gpus) / GB <= gpu_mem_gb
                ),
            )
        )
    return rows


def render_parallel_plan(rows: list[ParallelPlanRow], console: Any) -> None:
    """Print the per-mode table."""
    from rich.table import Table

    if not rows:
        return
    r0 = rows[0]
    table = Table(title=f"{r0.gpus} GPU(s) of {r0.gpu_mem_gb:g} GB, {r0.seq_len:,} tokens a step")
    for col in ("launch", "per-GPU GB", "fits", "longest context"):
        table.add_column(col, justify="left" if col == "launch" else "right")
    for r in rows:
        longest = f"~{r.max_fit_len:,}" if r.max_fit_len else "none"
        table.add_row(r.mode, f"{r.per_gpu_gb:.1f}", "yes" if r.fits else "no", longest)
    console.print(table)
