"""LoRA dropout fused into ``lora_A`` on a peft model, reversibly (``kernels.lean_lora_dropout``).

Usage::

    from longqa.patch.lora_dropout import apply_lean_lora_dropout, revert_lean_lora_dropout
    note = apply_lean_lora_dropout(model)   # "lean LoRA dropout on (210 adapted linears)"
    revert_lean_lora_dropout(model)         # peft's own dropout and lora_A forward again

For every adapted linear of a peft LoRA model whose adapter has dropout (``nn.Dropout``, p > 0;
not DoRA or another variant), the dropout module's instance ``forward`` passes its input through
and ``lora_A``'s computes :func:`longqa.ops.lora_dropout.dropout_linear` with that dropout's
``p`` and train/eval mode. peft's forward is unchanged: it still calls ``lora_A(dropout(x))``. The
layer then keeps ``x`` (shared by q, k and v) and a bit-packed mask instead of a dropped-out copy,
a bf16 copy and a bool mask per linear. The masks are a different draw than ``nn.Dropout``'s (same
law), so a run is not bitwise a run without the switch.
"""

from __future__ import annotations

from torch import Tensor, nn

from longqa.ops.lora_dropout import dropout_linear
from longqa.patch.forward import pass_through, patch_forward, revert_forward

_ATTR = "_longqa_lean_lora_dropout"  # on lora_A: its dropout module; on the dropout: True


def lora_dropout_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(dropout, lora_A)`` of every vanilla LoRA adapter of ``model`` with dropout p > 0."""
    pairs = []
    for m in model.modules():
        lora_a, drops = getattr(m, "lora_A", None), getattr(m, "lora_dropout", None)
        if not isinstance(lora_a, nn.ModuleDict) or not isinstance(drops, nn.ModuleDict):
            continue
        variants = getattr(m, "lora_variant", {}) or {}
        for name, a in lora_a.items():
            drop = drops[name] if name in drops else None
            if (isinstance(drop, nn.Dropout) and drop.p > 0 and isinstance(a, nn.Linear)
                    and a.bias is None and name not in variants):  # fmt: skip
                pairs.append((drop, a))
    return pairs


def _lean_a_forward(self: nn.Module, x: Tensor) -> Tensor:
    drop = self.__dict__[_ATTR]
    return dropout_linear(x, self.weight, drop.p, drop.training)


def apply_lean_lora_dropout(model: nn.Module) -> str:
    """Fuse every adapter's dropout into its ``lora_A``; returns a one-line note."""
    pairs = lora_dropout_pairs(model)
    if not pairs:
        return "lean LoRA dropout skipped: no LoRA adapter with dropout"
    for drop, a in pairs:
        patch_forward([a], _ATTR, drop, _lean_a_forward)
        patch_forward([drop], _ATTR, True, pass_through)  # lora_A applies the dropout
    return f"lean LoRA dropout on ({len(pairs)} adapted linears)"


def revert_lean_lora_dropout(model: nn.Module) -> int:
    """Give every patched dropout and ``lora_A`` its own forward back; returns how many pairs."""
    return revert_forward(model.modules(), _ATTR) // 2
