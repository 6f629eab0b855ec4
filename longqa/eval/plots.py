"""PNG figures for eval runs (matplotlib; headless outside notebooks, see ``longqa.core.plotting``).

Usage::

    from longqa.eval.plots import plot_heatmap, plot_by_length
    plot_heatmap(grid, lengths, depths, "runs/needle/heatmap.png", title="needle")
    plot_by_length({"4096": 1.0, "12288": 0.1}, "runs/pk/accuracy_by_length.png", "accuracy")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from longqa.core.plotting import pyplot as _pyplot
from longqa.core.plotting import save_figure as _save


def plot_heatmap(
    grid: Sequence[Sequence[float | None]],
    lengths: Sequence[int],
    depths: Sequence[float],
    path: str | Path,
    title: str = "needle in a haystack",
    window: int | None = None,
) -> Path:
    """Depth (rows, top = 0 %) × context length (columns) heatmap, red (0) to green (1).

    ``grid[d][l]`` is the mean score at ``depths[d]``, ``lengths[l]`` (None: not run, grey).
    ``window``: draw a dashed line after the last length within the model's native window.
    """
    import numpy as np

    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(lengths), 1.2 + 0.55 * len(depths)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(x) for x in lengths], rotation=45, ha="right")
    ax.set_yticks(range(len(depths)), [f"{d * 100:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=8)
    if window is not None:
        inside = [j for j, x in enumerate(lengths) if x <= window]
        if inside and inside[-1] < len(lengths) - 1:
            ax.axvline(inside[-1] + 0.5, color="black", linestyle="--", linewidth=1)
    mean = np.nanmean(data) if np.isfinite(data).any() else float("nan")
    ax.set_title(f"{title} (mean {mean:.2f})")
    fig.colorbar(im, ax=ax, label="score")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_by_length(
    values: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    path: str | Path,
    ylabel: str,
    *,
    ylim: tuple[float, float] | None = None,
    logy: bool = False,
    window: int | None = None,
    title: str | None = None,
) -> Path:
    """Line plot of a metric vs context length; ``values`` is ``{length: v}`` or several series
    ``{label: {length: v}}``. ``window`` draws the model's native window as a vertical line."""
    plt = _pyplot()
    first = next(iter(values.values()), None)
    series = values if isinstance(first, Mapping) else {"": values}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        xs = sorted(int(k) for k in pts)
        ax.plot(xs, [pts[str(x)] for x in xs], marker="o", label=label or None)
    if window is not None:
        ax.axvline(window, color="grey", linestyle="--", linewidth=1, label="native window")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if any(series) or window is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out
