"""Run a loaded model's RMSNorms through the lean autograd function, reversibly (``kernels.lean_rmsnorm``).

Usage::

    from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
    note = apply_lean_rmsnorm(model)   # "lean RMSNorm on (61 norms)"
    ...                                # training: norms save x and 1/rms, not fp32 normalised values
    revert_lean_rmsnorm(model)         # the model's own norm forward again

Every RMSNorm module of a family in :mod:`longqa.patch.families` (``LlamaRMSNorm``,
``Qwen2RMSNorm``, …: the same formula, checked against each class by the tests), peft's trainable
copies (``modules_to_save``) included, gets an instance-level ``forward`` calling
:func:`longqa.ops.rmsnorm.lean_rms_norm` with the module's own weight and epsilon. The output is
bitwise the module's own; the gradients are the same chain rule evaluated in the same dtypes.
Library source is never edited; :func:`revert_lean_rmsnorm` deletes the instance attributes.
"""

from __future__ import annotations

from torch import Tensor, nn

from longqa.ops.rmsnorm import lean_rms_norm
from longqa.patch.families import FAMILIES
from longqa.patch.forward import patch_forward, revert_forward

_ATTR = "_longqa_lean_rmsnorm"


def rmsnorm_classes() -> tuple[type, ...]:
    """The RMSNorm classes of the registered families that transformers has."""
    found = []
    for fam in FAMILIES.values():
        cls = getattr(fam.modeling(), f"{fam.prefix}RMSNorm", None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def rmsnorm_modules(model: nn.Module) -> list[nn.Module]:
    """RMSNorm modules of ``model`` (exact family classes, with ``weight`` and ``variance_epsilon``)."""
    classes = rmsnorm_classes()
    return [
        m
        for m in model.modules()
        if type(m) in classes and hasattr(m, "weight") and hasattr(m, "variance_epsilon")
    ]


def _lean_forward(self: nn.Module, hidden_states: Tensor) -> Tensor:
    return lean_rms_norm(hidden_states, self.weight, self.variance_epsilon)


def apply_lean_rmsnorm(model: nn.Module) -> str:
    """Give every family RMSNorm of ``model`` the lean forward; returns a one-line note."""
    norms = rmsnorm_modules(model)
    if not norms:
        return f"lean RMSNorm skipped: no supported RMSNorm in {type(model).__name__}"
    patch_forward(norms, _ATTR, True, _lean_forward)
    return f"lean RMSNorm on ({len(norms)} norms)"


def revert_lean_rmsnorm(model: nn.Module) -> int:
    """Give every patched norm of ``model`` its own forward back; returns how many were reverted."""
    return revert_forward(rmsnorm_modules(model), _ATTR)
