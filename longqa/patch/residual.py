"""Keep a QLoRA model's residual stream in bf16, reversibly (``memory.bf16_residual``).

Usage::

    from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
    note = apply_bf16_residual(model, torch.bfloat16)  # "bf16 residual stream on (61 norms, ...)"
    ...                                                # training under bf16 autocast
    revert_bf16_residual(model)                        # fp32 embedding and norm outputs again

peft's ``prepare_model_for_kbit_training`` casts every parameter it does not quantise to fp32: the
frozen embedding and LM head, and the norms. The embedding then emits fp32 hidden states, and
transformers' RMSNorm (``weight · n.to(x.dtype)``) returns fp32 when its weight is fp32, so every
layer input, saved checkpoint, boundary gradient and q/k/v projection (a 4-bit linear returns its
input's dtype) is fp32 — twice what the same model trained in bf16 holds
(``benchmarks/results/layer_memory.md``). This switch puts the stream back in the training dtype,
as training the model itself in bf16 does:

* the frozen input embedding and (untied) LM head weights go back to ``dtype``; they were loaded in
  it, so the round trip through fp32 is lossless;
* every family RMSNorm (trained copies included) returns its input's dtype: the norm still computes
  in fp32 with its fp32 weight, then rounds the product to bf16 once. It runs as the lean norm
  (:func:`longqa.ops.rmsnorm.lean_rms_norm` with ``out_dtype``, whatever ``kernels.lean_rmsnorm``
  says): transformers' graph would save an fp32 copy of each bf16 input, and a separate cast would
  bring an fp32 gradient back into every norm's backward.

Rounding differs from the fp32 stream (bf16 sums in the residual adds), so this is a numerics
choice, off by default; the trainable weights stay fp32. It only applies to bf16/fp16 mixed
precision: a float32 model (CPU training) is left alone with a note.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longqa.ops.rmsnorm import lean_rms_norm
from longqa.patch.forward import patch_forward, revert_forward
from longqa.patch.rmsnorm import rmsnorm_modules

_ATTR = "_longqa_bf16_residual"
_WEIGHT_ATTR = "_longqa_bf16_residual_weight"  # on an embedding: the weight's dtype before


def _norm_forward(self: nn.Module, hidden_states: Tensor) -> Tensor:
    return lean_rms_norm(
        hidden_states, self.weight, self.variance_epsilon, out_dtype=hidden_states.dtype
    )


def _frozen_embeddings(model: nn.Module) -> list[nn.Module]:
    found: list[nn.Module] = []
    for get in ("get_input_embeddings", "get_output_embeddings"):
        m = getattr(model, get, lambda: None)()
        w = getattr(m, "weight", None)
        if (isinstance(w, Tensor) and w.is_floating_point() and not w.requires_grad
                and all(m is not f for f in found)):  # fmt: skip
            found.append(m)
    return found


def apply_bf16_residual(model: nn.Module, dtype: torch.dtype) -> str:
    """Frozen embeddings back to ``dtype`` and norms returning their input's dtype; a note."""
    if dtype not in (torch.bfloat16, torch.float16):
        return f"bf16 residual skipped: the model computes in {str(dtype).removeprefix('torch.')}"
    embeddings = _frozen_embeddings(model)
    for m in embeddings:
        if m.weight.dtype != dtype:
            m.__dict__[_WEIGHT_ATTR] = m.weight.dtype
            m.weight.data = m.weight.data.to(dtype)
    norms = rmsnorm_modules(model)
    patch_forward(norms, _ATTR, True, _norm_forward)
    return (
        f"{str(dtype).removeprefix('torch.')} residual stream on ({len(norms)} norms, "
        f"{len(embeddings)} frozen embedding weights)"
    )


def revert_bf16_residual(model: nn.Module) -> int:
    """Undo :func:`apply_bf16_residual`; returns how many norms were reverted."""
    for m in model.modules():
        before = m.__dict__.pop(_WEIGHT_ATTR, None)
        if before is not None:
            m.weight.data = m.weight.data.to(before)
    return revert_forward(rmsnorm_modules(model), _ATTR)
