"""Instance-level ``forward`` patches: the reversible mechanism behind the per-module kernels.

Usage::

    from longqa.patch.forward import patch_forward, revert_forward
    patch_forward(modules, "_longqa_tiled_mlp", tile, _tiled_forward)  # marker value, new forward
    revert_forward(modules, "_longqa_tiled_mlp")                        # -> how many reverted
    underlying_forward(module, "_longqa_tiled_mlp")   # the forward beneath that patch

Each module gets a marker attribute (read by the new forward, e.g. the tile size) and an
instance ``forward`` bound to it; the class and library source are untouched, so reverting deletes
the two instance attributes and the class's own ``forward`` shows through again. A module that
already carries another patch's instance ``forward`` gets it back on revert, so patches stack when
they are reverted in the reverse order of application (as :func:`longqa.patch.kernels.revert_kernels`
does).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn


def patch_forward(
    modules: Iterable[nn.Module], attr: str, value: Any, forward: Callable[..., Any]
) -> int:
    """Set ``attr = value`` and bind ``forward`` on every module; returns how many. Idempotent: a
    module that already carries ``attr`` only takes the new value (one revert still undoes it)."""
    n = 0
    for m in modules:
        if attr in m.__dict__:
            m.__dict__[attr] = value
            n += 1
            continue
        if "forward" in m.__dict__:  # another patch's forward: restored by revert_forward
            m.__dict__[attr + "_previous"] = m.__dict__["forward"]
        m.__dict__[attr] = value  # never registered as a submodule, whatever the value is
        m.forward = types.MethodType(forward, m)
        n += 1
    return n


def revert_forward(modules: Iterable[nn.Module], attr: str) -> int:
    """Remove the patch from every module that carries ``attr``; returns how many were reverted."""
    n = 0
    for m in modules:
        if attr in m.__dict__:
            del m.__dict__[attr]
            previous = m.__dict__.pop(attr + "_previous", None)
            if previous is not None:
                m.forward = previous
            else:
                m.__dict__.pop("forward", None)
            n += 1
    return n


def pass_through(self: nn.Module, x: Any, *args: Any, **kwargs: Any) -> Any:
    """A forward that returns its input: for a module whose work another patched module does
    (a norm inside the tiled MLP, a dropout inside ``lora_A``)."""
    return x


def underlying_forward(module: nn.Module, attr: str) -> Callable[..., Any]:
    """The forward beneath the patch ``attr`` of ``module``: the previous patch's, else the
    class's own (bound to ``module``)."""
    previous = module.__dict__.get(attr + "_previous")
    return previous if previous is not None else type(module).forward.__get__(module)
