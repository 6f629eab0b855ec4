"""Instance-level ``forward`` patches: the reversible mechanism behind the per-module kernels.

Usage::

    from longqa.patch.forward import patch_forward, revert_forward
    patch_forward(modules, "_longqa_tiled_mlp", tile, _tiled_forward)  # marker value, new forward
    revert_forward(modules, "_longqa_tiled_mlp")                        # -> how many reverted

Each module gets a marker attribute (read by the new forward, e.g. the tile size) and an
instance ``forward`` bound to it; the class and library source are untouched, so reverting deletes
the two instance attributes and the class's own ``forward`` shows through again.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn


def patch_forward(
    modules: Iterable[nn.Module], attr: str, value: Any, forward: Callable[..., Any]
) -> int:
    """Set ``attr = value`` and bind ``forward`` on every module; returns how many."""
    n = 0
    for m in modules:
        setattr(m, attr, value)
        m.forward = types.MethodType(forward, m)
        n += 1
    return n


def revert_forward(modules: Iterable[nn.Module], attr: str) -> int:
    """Remove the patch from every module that carries ``attr``; returns how many were reverted."""
    n = 0
    for m in modules:
        if attr in m.__dict__:
            del m.__dict__[attr]
            m.__dict__.pop("forward", None)
            n += 1
    return n
