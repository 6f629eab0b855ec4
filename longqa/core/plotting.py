"""Matplotlib plumbing shared by every figure longqa writes.

    from longqa.core.plotting import pyplot, save_figure
    plt = pyplot()
    fig, ax = plt.subplots()
    save_figure(fig, "runs/x/plot.png")

``pyplot()`` selects the headless Agg backend unless it runs inside a Jupyter kernel (notebooks keep
their inline figures); ``save_figure`` writes the PNG atomically (temp file + rename).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from longqa.core.paths import keep_umask


def pyplot() -> Any:
    """``matplotlib.pyplot``, on the Agg backend outside notebooks."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        keep_umask(tmp)  # mkstemp creates 600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
