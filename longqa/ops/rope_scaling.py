"""RoPE scaling methods in pure torch: inverse frequencies + attention (mscale) factor.

Usage::

    from longqa.ops.rope_scaling import compute_rope, sample_lengths
    inv_freq, attn = compute_rope(
        {"method": "yarn", "factor": 4.0},
        head_dim=128, base=10000.0, original_max_position_embeddings=2048,
    )
    # inv_freq: float32 [head_dim // 2]; cos/sin = cos/sin(pos * inv_freq) * attn
    sample_lengths(position_ids)   # [B, T]: the length of each token's sample (dynamic methods)

``params`` is ``RopeConfig.model_dump()`` (see ``longqa.config.recipe``); missing keys take the defaults
below. ``params["base"]`` replaces the model's base before a method is applied (for ``abf`` it *is*
the method), ``params["original_max_position_embeddings"]`` replaces the model's original window,
``params["attention_factor"]`` overrides any method's attention factor and, when ``factor`` is unset,
``params["max_position_embeddings"] / L0`` supplies it.

Adding a method = one ``_method(inp) -> (inv_freq, attention_factor)`` function + one line in
``_REGISTRY``. This module must never import transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from longqa.core.errors import LongqaError

DEFAULTS: dict[str, Any] = {
    "factor": None,
    "original_max_position_embeddings": None,
    "base": None,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": None,
    "margin": 512,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "ntk_variant": "hf",
    "max_position_embeddings": None,
}


@dataclass(frozen=True)
class RopeInputs:
    """Resolved inputs of one computation (what every method function receives)."""

    params: Mapping[str, Any]
    head_dim: int  # rotary dim d (inv_freq has d // 2 entries)
    base: float  # effective base (model's, or params["base"])
    original_length: int  # L0, the pretraining window
    seq_len: int | None  # L, the current length (dynamic methods)
    factor: float | None  # s (params["factor"] or max_position_embeddings / L0)


def default_inv_freq(head_dim: int, base: float) -> Tensor:
    """Original RoPE (arXiv:2104.09864): theta_i = base^(-2i/d), i = 0..d/2-1 → float32 [d/2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    return 1.0 / (base**exponents)


def yarn_mscale(scale: float) -> float:
    """YaRN attention temperature sqrt(1/t) = 0.1·ln(s) + 1 (arXiv:2309.00071, eq. 22); 1 for s ≤ 1."""
    return 1.0 if scale <= 1.0 else 0.1 * math.log(scale) + 1.0


def _need_factor(inp: RopeInputs) -> float:
    if inp.factor is None:
        raise LongqaError(
            f"rope method '{inp.params.get('method')}' needs 'factor' "
            "(or 'max_position_embeddings' to derive it)"
        )
    return inp.factor


def _none(inp: RopeInputs) -> tuple[Tensor, float]:
    """Unscaled RoPE."""
    return default_inv_freq(inp.head_dim, inp.base), 1.0


def _linear(inp: RopeInputs) -> tuple[Tensor, float]:
    """Position interpolation (arXiv:2306.15595): theta_i / s — same as HF ``linear``."""
    return default_inv_freq(inp.head_dim, inp.base) / _need_factor(inp), 1.0


def _ntk(inp: RopeInputs) -> tuple[Tensor, float]:
    """Static NTK-aware scaling (bloc97, reddit r/LocalLLaMA 14lz7j5): base' = base·s^(d/(d-2))."""
    s, d = _need_factor(inp), inp.head_dim
    return default_inv_freq(d, inp.base * s ** (d / (d - 2))), 1.0


def _dynamic_ntk(inp: RopeInputs) -> tuple[Tensor, float]:
    """Dynamic NTK from the current length L.

    ``ntk_variant="hf"`` (HF ``_compute_dynamic_ntk_parameters``): base·((s·L/L0) - (s-1))^(d/(d-2))
    with L = max(L, L0). ``ntk_variant="qwen"`` (Qwen-7B/14B ``modeling_qwen.py``):
    alpha = max(1, 2^ceil(log2(L/L0) + 1) - 1), base·alpha^(d/(d-2)).
    """
    d, l0 = inp.head_dim, inp.original_length
    length = max(inp.seq_len or l0, l0)
    if inp.params.get("ntk_variant", "hf") == "qwen":
        alpha = max(2 ** math.ceil(math.log2(length / l0) + 1) - 1, 1)
    else:
        s = _need_factor(inp)
        alpha = s * length / l0 - (s - 1)
    return default_inv_freq(d, inp.base * alpha ** (d / (d - 2))), 1.0


def yarn_inv_freq(
    head_dim: int,
    base: float,
    factor: float,
    original_length: int,
    beta_fast: float,
    beta_slow: float,
) -> Tensor:
    """YaRN "NTK-by-parts" frequencies (arXiv:2309.00071 §3.2; HF ``_compute_yarn_parameters``).

    Dims rotating more than ``beta_fast`` times over L0 keep theta_i (extrapolate), fewer than
    ``beta_slow`` get theta_i / s (interpolate), a linear ramp between (truncated to whole dims).
    """
    d = head_dim
    pos_freqs = base ** (torch.arange(0, d, 2).to(dtype=torch.float) / d)  # [d/2]
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)

    def correction_dim(rotations: float) -> float:
        return (d * math.log(original_length / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), d - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1 → extrapolate (high frequency), 0 → interpolate
    return interpolation * (1 - keep) + extrapolation * keep


def _yarn(inp: RopeInputs) -> tuple[Tensor, float]:
    """Static YaRN with factor s; attention factor 0.1·ln s + 1 (arXiv:2309.00071)."""
    s, p = _need_factor(inp), inp.params
    inv = yarn_inv_freq(
        inp.head_dim, inp.base, s, inp.original_length, p["beta_fast"], p["beta_slow"]
    )
    return inv, yarn_mscale(s)


def _dynamic_yarn(inp: RopeInputs) -> tuple[Tensor, float]:
    """Dynamic YaRN: s = max(1, (L + margin) / L0) from the current length, then YaRN.

    As used with "original text paraphrasing" training (arXiv:2312.11193); margin 512 by default
    so the tokens generated after the prompt stay inside the scaled window.
    """
    p, l0 = inp.params, inp.original_length
    s = 1.0 if inp.seq_len is None else max(1.0, (inp.seq_len + int(p["margin"])) / l0)
    inv = yarn_inv_freq(inp.head_dim, inp.base, s, l0, p["beta_fast"], p["beta_slow"])
    return inv, yarn_mscale(s)


def _llama3(inp: RopeInputs) -> tuple[Tensor, float]:
    """Llama 3.1 scaling (HF ``_compute_llama3_parameters``): wavelengths above L0/low_freq_factor
    are divided by s, below L0/high_freq_factor kept, smooth interpolation between."""
    s, p, l0 = _need_factor(inp), inp.params, inp.original_length
    low_ff, high_ff = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    if high_ff <= low_ff:
        raise LongqaError(
            f"llama3 rope: high_freq_factor ({high_ff}) must exceed low_freq_factor ({low_ff})"
        )
    inv = default_inv_freq(inp.head_dim, inp.base)
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = l0 / low_ff, l0 / high_ff
    scaled = torch.where(wavelen > low_wavelen, inv / s, inv)
    smooth = (l0 / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / s + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def _abf(inp: RopeInputs) -> tuple[Tensor, float]:
    """Adjusted base frequency: only the base changes, e.g. 10K→500K (Llama 2 Long,
    arXiv:2309.16039) or 500K→150M (ChatQA 2, arXiv:2407.14482)."""
    if inp.params.get("base") is None:
        raise LongqaError("rope method 'abf' needs 'base' (the new rope base, e.g. 500000)")
    return default_inv_freq(inp.head_dim, inp.base), 1.0


@dataclass(frozen=True)
class RopeMethod:
    fn: Callable[[RopeInputs], tuple[Tensor, float]]
    dynamic: bool  # depends on the current length
    summary: str


_REGISTRY: dict[str, RopeMethod] = {
    "none": RopeMethod(_none, False, "unscaled RoPE"),
    "linear": RopeMethod(_linear, False, "position interpolation: theta / s"),
    "ntk": RopeMethod(_ntk, False, "static NTK-aware: base·s^(d/(d-2))"),
    "dynamic-ntk": RopeMethod(_dynamic_ntk, True, "NTK from current length (hf or qwen)"),
    "yarn": RopeMethod(_yarn, False, "YaRN ramp + mscale 0.1·ln s + 1"),
    "dynamic-yarn": RopeMethod(_dynamic_yarn, True, "YaRN with s = (L + margin) / L0"),
    "llama3": RopeMethod(_llama3, False, "Llama 3.1 low/high frequency factors"),
    "abf": RopeMethod(_abf, False, "new base only"),
}


def available_methods() -> list[str]:
    """Registry names, in registry order."""
    return list(_REGISTRY)


def _method(name: str) -> RopeMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LongqaError(
            f"unknown rope method '{name}'; available: {', '.join(_REGISTRY)}"
        ) from None


def is_dynamic(method: str) -> bool:
    """True when the method's frequencies depend on the current sequence length."""
    return _method(method).dynamic


def describe(method: str) -> str:
    """One-line summary of a method."""
    return _method(method).summary


def check_params(params: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`LongqaError` for an unknown method, factor < 1 or a missing field."""
    method = params.get("method", "none")
    _method(method)
    factor = params.get("factor")
    if factor is not None and float(factor) < 1.0:
        raise LongqaError(f"rope factor must be >= 1 (got {factor})")
    has_factor = factor is not None or params.get("max_position_embeddings") is not None
    needs_factor = method in ("linear", "ntk", "yarn", "llama3") or (
        method == "dynamic-ntk" and params.get("ntk_variant", "hf") != "qwen"
    )
    if needs_factor and not has_factor:
        raise LongqaError(f"rope method '{method}' needs a factor (e.g. --rope-factor 4)")
    if method == "abf" and params.get("base") is None:
        raise LongqaError("rope method 'abf' needs a new base (e.g. --rope-base 500000)")
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    if method == "llama3" and float(high) <= float(low):
        raise LongqaError(
            f"llama3 rope: high_freq_factor ({high}) must exceed low_freq_factor ({low})"
        )
    base = params.get("base")
    if base is not None and float(base) <= 1.0:
        raise LongqaError(f"rope base must be > 1 (got {base})")


def compute_rope(
    params: Mapping[str, Any],
    *,
    head_dim: int,
    base: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
) -> tuple[Tensor, float]:
    """Inverse frequencies (float32 ``[head_dim // 2]``) and attention factor for ``params``.

    ``base`` / ``original_max_position_embeddings`` are the model's; ``seq_len`` is the current
    length, used only by dynamic methods (``None`` → the original window, i.e. no dynamic scaling).
    """
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    p.setdefault("method", "none")
    check_params(p)
    if head_dim < 4 or head_dim % 2:
        raise LongqaError(f"rope head_dim must be an even number >= 4 (got {head_dim})")
    l0 = int(p["original_max_position_embeddings"] or original_max_position_embeddings)
    if l0 < 1:
        raise LongqaError(f"rope original window must be >= 1 (got {l0})")
    factor = p["factor"]
    if factor is None and p["max_position_embeddings"] is not None:
        factor = max(1.0, p["max_position_embeddings"] / l0)
    inp = RopeInputs(
        params=p,
        head_dim=int(head_dim),
        base=float(p["base"] if p["base"] is not None else base),
        original_length=l0,
        seq_len=int(seq_len) if seq_len is not None else None,
        factor=float(factor) if factor is not None else None,
    )
    inv_freq, attention_factor = _REGISTRY[p["method"]].fn(inp)
    if p["attention_factor"] is not None:
        attention_factor = float(p["attention_factor"])
    return inv_freq.to(torch.float32), float(attention_factor)


def sample_lengths(position_ids: Tensor) -> Tensor:
    """Length of the sample each token belongs to, ``[B, T]`` (long).

    A sample is a run of consecutive positions (``p, p+1, …``): packed rows restart at 0 for each
    sample, left padding repeats a position (HF fills pads with 1). A sample's length is its last
    position + 1 — for a decoding continuation, the whole sequence so far. On the packing
    collator's rows (every sample and the padding run ``0..n-1``) this is each sample's token count.
    It is only right on a *whole* row: a sequence-parallel piece cut inside a sample sees a run that
    ends early, so its lengths must come from the unsplit row (``longqa.train.distributed``).
    """
    pos = position_ids.long()
    if pos.dim() == 1:
        pos = pos[None]
    batch, width = pos.shape
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = (pos[:, 1:] - pos[:, :-1]) != 1
    segment = starts.cumsum(-1) + torch.arange(batch, device=pos.device)[:, None] * (width + 1)
    last = torch.zeros(batch * (width + 1), dtype=pos.dtype, device=pos.device)
    last = last.scatter_reduce(0, segment.reshape(-1), pos.reshape(-1), "amax", include_self=False)
    return last[segment] + 1


def rope_report(
    params: Mapping[str, Any],
    *,
    head_dim: int,
    base: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
) -> dict[str, Any]:
    """Per-pair view of a method (what ``longqa rope show`` prints), JSON-serialisable.

    ``scale`` is wavelength after / before (= theta_before / theta_after) for each rotary pair.
    """
    inv_freq, attention_factor = compute_rope(
        params,
        head_dim=head_dim,
        base=base,
        original_max_position_embeddings=original_max_position_embeddings,
        seq_len=seq_len,
    )
    before = default_inv_freq(head_dim, float(base))
    method = params.get("method", "none")
    return {
        "method": method,
        "dynamic": is_dynamic(method),
        "params": {k: v for k, v in params.items() if k != "method" and v is not None},
        "head_dim": head_dim,
        "base": float(base),
        "original_max_position_embeddings": int(
            params.get("original_max_position_embeddings") or original_max_position_embeddings
        ),
        "seq_len": seq_len,
        "inv_freq": inv_freq.tolist(),
        "original_inv_freq": before.tolist(),
        "wavelength_before": (2 * math.pi / before).tolist(),
        "wavelength_after": (2 * math.pi / inv_freq).tolist(),
        "scale": (before / inv_freq).tolist(),
        "attention_factor": attention_factor,
    }
