"""Attention shape over the context: is it a U (start + end) or a W (start + relevant middle + end)?

    from longqa.analyze.attention import attention_profile
    prof = attention_profile(model, input_ids, query_positions, context_end, bins=50,
                             span=(doc_start_tok, doc_end_tok))
    prof.mean        # [bins] — attention mass per relative-position bin, sums to 1
    prof.per_layer   # [layers, bins]

For every query token in ``query_positions`` (the answer tokens) and every layer and head, the
attention weights over the context keys ``[0, context_end)`` are renormalised to sum to 1 and binned by
relative key position ``k / context_end``. Averaging over tokens, heads and layers gives the profile
that "Lost in the Middle" (Liu et al., 2023, arXiv:2307.03172) describes as U-shaped and that the
paraphrasing method aims to turn into a W by adding mass at the relevant document.

The model must run with eager attention (the weights are taken from each attention module's output by
a forward hook, one layer at a time, so the full ``layers × heads × T × T`` tensor never exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class AttentionProfile:
    """Binned attention mass of the answer tokens over relative context position."""

    bins: int
    context_end: int
    per_layer: torch.Tensor  # [layers, bins], each row sums to 1
    per_token: torch.Tensor  # [queries, bins], each row sums to 1 (mean over layers and heads)
    span: tuple[float, float] | None = None  # relevant span as relative positions [start, end)
    layers: list[int] = field(default_factory=list)

    @property
    def mean(self) -> torch.Tensor:
        """[bins] — the profile averaged over layers (sums to 1)."""
        return self.per_layer.mean(dim=0)

    def span_bins(self) -> tuple[int, int] | None:
        """Bin indices [first, last] covered by the relevant span, or None."""
        if self.span is None:
            return None
        first = min(int(self.span[0] * self.bins), self.bins - 1)
        last = min(
            max(first, int(torch.tensor(self.span[1] * self.bins).ceil().item()) - 1), self.bins - 1
        )
        return first, last

    def summary(self) -> dict[str, float]:
        """Scalar shape measures: mass at the start/middle/end tenths and in the relevant span."""
        m = self.mean
        tenth = max(1, self.bins // 10)
        out = {
            "start_mass": float(m[:tenth].sum()),
            "end_mass": float(m[-tenth:].sum()),
            "middle_mass": float(m[tenth:-tenth].sum()),
        }
        sb = self.span_bins()
        if sb is not None:
            span_mass = float(m[sb[0] : sb[1] + 1].sum())
            share = (sb[1] - sb[0] + 1) / self.bins
            out["span_mass"] = span_mass
            out["span_lift"] = span_mass / share  # 1.0 = no more than a uniform spread would give
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "bins": self.bins,
            "context_end": self.context_end,
            "layers": self.layers,
            "span": list(self.span) if self.span else None,
            "mean": self.mean.tolist(),
            "per_layer": self.per_layer.tolist(),
            "summary": self.summary(),
        }


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not mods:
        raise ValueError("no '*.self_attn' modules found: attention analysis supports Llama/Qwen2")
    return mods


def bin_context_attention(weights: torch.Tensor, context_end: int, bins: int) -> torch.Tensor:
    """Renormalise attention rows over keys ``[0, context_end)`` and sum them into ``bins`` bins.

    weights: [..., keys] (keys >= context_end) → [..., bins], each row summing to 1.
    """
    ctx = weights[..., :context_end].float()
    ctx = ctx / ctx.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    # bin index of each key position k: floor(k * bins / context_end)
    idx = torch.div(torch.arange(context_end) * bins, context_end, rounding_mode="floor")
    out = torch.zeros(*ctx.shape[:-1], bins, dtype=torch.float32)
    out.index_add_(out.dim() - 1, idx, ctx)
    return out


@torch.no_grad()
def attention_profile(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    query_positions: Sequence[int] | torch.Tensor,
    context_end: int,
    *,
    bins: int = 50,
    span: tuple[int, int] | None = None,
    layers: Sequence[int] | None = None,
) -> AttentionProfile:
    """Attention profile of ``query_positions`` over the context ``[0, context_end)``.

    input_ids: [1, T]. query_positions: token indices (>= context_end) whose attention is measured.
    span: the relevant document's token range [start, end) inside the context, marked in the result.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape [1, T], got {tuple(input_ids.shape)}")
    q = torch.as_tensor(list(query_positions), dtype=torch.long)
    if q.numel() == 0:
        raise ValueError("no query positions given")
    if context_end < bins:
        raise ValueError(f"context of {context_end} tokens is shorter than {bins} bins")
    if int(q.min()) < context_end or int(q.max()) >= input_ids.shape[1]:
        raise ValueError("query positions must lie after the context and inside the input")
    attn_impl = getattr(model.config, "_attn_implementation", None)
    if attn_impl not in (None, "eager"):
        raise ValueError(f"attention analysis needs eager attention (model uses '{attn_impl}')")

    modules = _attention_modules(model)
    chosen = list(range(len(modules))) if layers is None else list(layers)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_mod, _inp, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("attention module returned no weights (is attention eager?)")
            rows = weights[0, :, q, :]  # [heads, queries, keys]
            captured[layer] = bin_context_attention(rows, context_end, bins).mean(dim=0)

        return hook

    handles = [modules[i].register_forward_hook(make_hook(i)) for i in chosen]
    try:
        model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    per_layer_tokens = torch.stack([captured[i] for i in chosen])  # [layers, queries, bins]
    rel_span = (span[0] / context_end, span[1] / context_end) if span else None
    return AttentionProfile(
        bins=bins,
        context_end=context_end,
        per_layer=per_layer_tokens.mean(dim=1),
        per_token=per_layer_tokens.mean(dim=0),
        span=rel_span,
        layers=chosen,
    )
