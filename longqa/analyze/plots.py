"""Matplotlib figures for the analyses (Agg backend: works headless, writes PNG files).

plot_gap_histograms({"paraphrase": gaps_a, "plain": gaps_b}, threshold, "hist.png")
plot_attention_profiles({"base": prof_a, "adapter": prof_b}, "attention.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from longqa.core.plotting import pyplot as _pyplot
from longqa.core.plotting import save_figure


def plot_gap_histograms(
    gaps: Mapping[str, torch.Tensor], threshold: float, path: str | Path, title: str = ""
) -> Path:
    """Histogram of per-token log-probability gaps (full − ablated) per dataset, threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, g in gaps.items():
        if g.numel() == 0:
            continue
        share = float((g > threshold).float().mean())
        ax.hist(
            g.clamp(-5, 15).numpy(), bins=60, alpha=0.55, label=f"{name} ({share:.0%} effective)"
        )
    ax.axvline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold}"
    )
    ax.set_xlabel("log p(token | full context) − log p(token | relevant docs removed)  [nats]")
    ax.set_ylabel("assistant tokens")
    ax.set_title(title or "Effective tokens")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_attention_profiles(
    profiles: Mapping[str, object], path: str | Path, title: str = ""
) -> Path:
    """Attention mass over relative context position for one or more models, relevant span shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, prof in profiles.items():
        mean = prof.mean  # type: ignore[attr-defined]
        bins = prof.bins  # type: ignore[attr-defined]
        xs = (torch.arange(bins) + 0.5) / bins
        (line,) = ax.plot(xs.numpy(), mean.numpy(), marker=".", label=name)
        span = prof.span  # type: ignore[attr-defined]
        if span:  # the relevant span, shaded in the curve's colour
            ax.axvspan(
                span[0], max(span[1], span[0] + 0.5 / bins), color=line.get_color(), alpha=0.2
            )
    ax.set_xlabel("relative position in the context (0 = start, 1 = end)")
    ax.set_ylabel("attention mass of answer tokens")
    ax.set_yscale("log")
    ax.set_title(title or "Attention profile")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_layer_heatmap(profile: object, path: str | Path, title: str = "") -> Path:
    """Per-layer attention profile as a heatmap (layers × relative position)."""
    plt = _pyplot()
    per_layer = profile.per_layer  # type: ignore[attr-defined]
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(
        per_layer.numpy(),
        aspect="auto",
        origin="lower",
        extent=(0, 1, -0.5, per_layer.shape[0] - 0.5),
    )
    fig.colorbar(im, ax=ax, label="attention mass")
    ax.set_xlabel("relative position in the context")
    ax.set_ylabel("layer")
    ax.set_title(title or "Attention profile per layer")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_rope_methods(
    methods: Mapping[str, Mapping[str, object]],
    *,
    head_dim: int = 64,
    base: float = 10000.0,
    original_length: int = 2048,
    seq_len: int | None = None,
    path: str | Path | None = None,
):
    """Per-pair scale (wavelength after / before) of several RoPE methods, with the attention factor
    in the legend. Returns the matplotlib figure (also saved when ``path`` is given)."""
    from longqa.ops.rope_scaling import rope_report

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, params in methods.items():
        rep = rope_report(
            params,
            head_dim=head_dim,
            base=base,
            original_max_position_embeddings=original_length,
            seq_len=seq_len,
        )
        label = f"{name} (attn ×{rep['attention_factor']:.3f})"
        ax1.plot(rep["scale"], marker=".", label=label)
        ax2.loglog(rep["wavelength_before"], rep["wavelength_after"], marker=".", label=name)
    ax1.set_xlabel("rotary pair index (0 = highest frequency)")
    ax1.set_ylabel("wavelength after / before")
    ax1.set_yscale("log")
    ax1.set_title("Per-dimension scale")
    ax1.legend(fontsize=8)
    ax2.axvline(original_length, color="grey", linestyle=":", label="original window")
    ax2.set_xlabel("wavelength before [tokens]")
    ax2.set_ylabel("wavelength after [tokens]")
    ax2.set_title("Wavelengths")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_dynamic_scale(
    methods: Mapping[str, Mapping[str, object]],
    lengths: list[int],
    *,
    head_dim: int = 64,
    base: float = 10000.0,
    original_length: int = 2048,
    path: str | Path | None = None,
):
    """Effective scale of the lowest frequency (and attention factor) versus current length for
    dynamic methods. Returns the figure."""
    from longqa.ops.rope_scaling import rope_report

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, params in methods.items():
        reps = [
            rope_report(
                params,
                head_dim=head_dim,
                base=base,
                original_max_position_embeddings=original_length,
                seq_len=n,
            )
            for n in lengths
        ]
        ax1.plot(lengths, [r["scale"][-1] for r in reps], marker=".", label=name)
        ax2.plot(lengths, [r["attention_factor"] for r in reps], marker=".", label=name)
    for ax in (ax1, ax2):
        ax.axvline(original_length, color="grey", linestyle=":")
        ax.set_xlabel("current sequence length [tokens]")
        ax.legend(fontsize=8)
    ax1.set_ylabel("scale of the lowest-frequency pair")
    ax2.set_ylabel("attention factor")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
