"""Sequence-tiled MLP: run a token-wise MLP over tiles of the sequence, forward and backward.

Usage::

    from longqa.ops.tiled_mlp import tiled_mlp
    y = tiled_mlp(mlp.forward, x, tile=4096, params=[p for p in mlp.parameters() if p.requires_grad])
    # y == mlp(x), but the [B, tile, intermediate] activations exist for one tile at a time

A transformer MLP (``down(act(gate(x)) * up(x))``) acts on each token independently, so its output
on ``x[:, a:b]`` is its output on the whole sequence restricted to ``[a, b)``. At long lengths its
intermediates (``gate``, ``up``, ``act(gate)``, their product, LoRA dropout copies: ~5 ×
``intermediate`` values per token) are the largest tensors of a layer. This autograd function
keeps only the input ``x`` for backward; the forward computes tile after tile without autograd, and
the backward recomputes each tile with autograd on and back-propagates it at once, so the
intermediates of one tile exist at a time (ALST, "Arctic Long Sequence Training",
https://arxiv.org/abs/2506.13996, Sec. "TiledMLP"; DeepSpeed's
``deepspeed/runtime/sequence_parallel/ulysses_sp.py`` ``TiledMLP``).

Unlike DeepSpeed's version, parameter gradients are *returned* from ``backward`` (the parameters
are inputs of the function), so autograd accumulates them as usual (hooks, gradient checkpointing,
peft all see ordinary gradients); the random-number state is saved at forward and restored in
backward, so dropout inside the MLP (peft's ``lora_dropout``) draws the same masks in the
recomputation as in the forward; and the recomputation runs under the forward's autocast state
(bf16 mixed precision), as ``torch.utils.checkpoint`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def tile_bounds(length: int, tile: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(length)`` in tiles of ``tile`` (last one shorter)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1 (got {tile})")
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _tiles_into(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int) -> Tensor:
    """``fn`` over the tiles of ``x``, each written into one preallocated output (a ``cat`` of the
    tiles would hold the output twice)."""
    bounds = tile_bounds(x.shape[1], tile)
    a, b = bounds[0]
    first = fn(x[:, a:b])  # [B, tile, H_out]: the output's dtype and width
    out = first.new_empty(x.shape[0], x.shape[1], first.shape[-1])
    out[:, a:b] = first
    del first
    for a, b in bounds[1:]:
        out[:, a:b] = fn(x[:, a:b])
    return out


class _TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, fn: Callable[[Tensor], Tensor], tile: int, x: Tensor, *params: Tensor):  # noqa: ANN205
        ctx.fn, ctx.tile = fn, tile
        ctx.rng = _rng_state(x.device)
        kind = x.device.type  # recompute under the forward's autocast, as checkpointing does
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.save_for_backward(x, *params)
        # x: [B, S, H] -> out: [B, S, H_out], one [B, tile, I] intermediate at a time
        return _tiles_into(fn, x, tile)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # noqa: ANN205
        x, *params = ctx.saved_tensors
        need_x = ctx.needs_input_grad[2]
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[3:], strict=True) if need]
        grad_x = torch.empty_like(x) if need_x else None
        grad_p: list[Tensor | None] = [None] * len(wanted)
        cpu_state, cuda_state = ctx.rng
        devices = [x.device] if x.device.type == "cuda" else []
        kind, enabled, dtype = ctx.autocast
        with (
            torch.random.fork_rng(devices=devices),
            torch.enable_grad(),
            torch.autocast(kind, dtype=dtype, enabled=enabled),
        ):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, x.device)
            for a, b in tile_bounds(x.shape[1], ctx.tile):  # same order as forward: same masks
                x_t = x[:, a:b].detach().requires_grad_(need_x)
                out_t = ctx.fn(x_t)
                inputs = ([x_t] if need_x else []) + wanted
                grads = torch.autograd.grad(
                    out_t, inputs, grad_out[:, a:b], allow_unused=True, materialize_grads=True
                )
                if need_x:
                    grad_x[:, a:b] = grads[0]
                    grads = grads[1:]
                for i, g in enumerate(grads):
                    grad_p[i] = g if grad_p[i] is None else grad_p[i].add_(g)
                del out_t, grads
        it = iter(grad_p)
        param_grads = [next(it) if need else None for need in ctx.needs_input_grad[3:]]
        return (None, None, grad_x, *param_grads)


def tiled_mlp(
    fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, params: Sequence[Tensor] = ()
) -> Tensor:
    """``fn(x)`` computed over sequence tiles of ``x`` (``[B, S, H]``, tiled along ``S``).

    ``fn`` must act on each position independently (an MLP); ``params`` are the tensors ``fn``
    uses that need gradients (LoRA A/B, trainable weights). A sequence no longer than one tile
    runs ``fn`` directly; when nothing needs a gradient the tiles run one after the other without
    autograd.
    """
    if x.dim() != 3:
        raise ValueError(
            f"tiled_mlp expects [batch, seq, hidden] input, got shape {tuple(x.shape)}"
        )
    if x.shape[1] <= tile:
        return fn(x)
    grad_needed = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in params)
    )
    if not grad_needed:
        return _tiles_into(fn, x, tile)
    return _TiledMLP.apply(fn, tile, x, *params)
