"""One contract for every reversible patch, as peft's ``PeftCommonTester`` runs one set of checks
over every method: apply → the output matches the patch's reference (and the patch is live: the
model's structure changed) → revert is bit-exact (logits, weights with their dtypes, structure) →
apply twice is the same as once and one revert undoes it → applying and reverting on a second
instance of the model leaves the first as it was, and the reverse.

Patches: RoPE scaling (linear, YaRN; reference: transformers' own scaled model), original Qwen's
log-n attention (reference: the query scaled by its formula), the fused RoPE kernel (Triton
interpreter; reference: the unpatched model), tiled MLP with and without the norm in the tiles,
lean RMSNorm, lean LoRA dropout, the bf16 residual stream (reference: the fp32 stream, to bf16
rounding). Exact patches are also checked on the gradients of the trainable weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch import nn

from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.patch.kernels import apply_kernels, revert_kernels
from longqa.patch.lora_dropout import apply_lean_lora_dropout, revert_lean_lora_dropout
from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
from longqa.patch.rope import apply_rope_scaling, revert_rope_scaling
from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp
from longqa.testing.tiny import tiny_llama_config, with_lora

L0 = 16  # the tiny models' window: the inputs (40 tokens) run past it
NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]


def _llama(seed: int = 0, rope: dict | None = None, window: int = L0) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, **(rope or {})}
    config = tiny_llama_config(
        max_position_embeddings=window, rope_parameters=rope_parameters, attn_implementation="eager"
    )
    return LlamaForCausalLM(config).eval()


def _lora(seed: int = 0) -> nn.Module:
    return with_lora(_llama(seed), r=4, lora_alpha=8, lora_dropout=0.1,
                     target_modules="all-linear", modules_to_save=NORMS).eval()  # fmt: skip


def _qlora_prepared(seed: int = 0) -> nn.Module:
    """Loaded in bf16, then peft's k-bit preparation (fp32 upcast of what it does not quantise)."""
    from peft import prepare_model_for_kbit_training

    model = _llama(seed).to(torch.bfloat16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return with_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).eval()


def _same_weights(reference: nn.Module, model: nn.Module) -> nn.Module:
    reference.load_state_dict(model.state_dict())
    return reference


def _logn_reference(seed: int) -> nn.Module:
    """Qwen's log-n attention written out: the query of 1-based position i > L0 times
    log(i) / log(L0), on the dynamic-NTK (Qwen) model without the patch's hook."""
    model = _llama(seed)
    apply_rope_scaling(model, {"method": "dynamic-ntk", "ntk_variant": "qwen"})

    def scale(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        t = out.shape[1]
        f = [math.log(i, L0) if i > L0 else 1.0 for i in range(1, t + 1)]
        return out * torch.tensor(f, dtype=out.dtype)[None, :, None]

    for layer in model.model.layers:
        layer.self_attn.q_proj.register_forward_hook(scale)
    return model


@dataclass(frozen=True)
class Patch:
    name: str
    build: Callable[[int], nn.Module]  # seed → a fresh model (same seed, same weights)
    apply: Callable[[nn.Module], Any]
    revert: Callable[[nn.Module], Any]
    reference: (
        Callable[[nn.Module], nn.Module] | None
    )  # the unpatched model → expected; None: itself
    tol: tuple[float, float] = (1e-5, 1e-5)  # rtol, atol against the reference
    grads: bool = False  # also compare the trainable weights' gradients with the reference's
    autocast: bool = False  # run under bf16 autocast (mixed-precision training's forward)
    tokens: int = 40  # of the input rows (the Triton interpreter is slow: the kernel gets fewer)


_KERNEL_ROPE = KernelsConfig(rope=True, chunked_ce=False)

PATCHES = [
    Patch(
        "rope-linear",
        _llama,
        lambda m: apply_rope_scaling(m, {"method": "linear", "factor": 4.0}),
        revert_rope_scaling,
        lambda m: _same_weights(_llama(1, {"rope_type": "linear", "factor": 4.0}, 4 * L0), m),
    ),
    Patch(
        "rope-yarn",
        _llama,
        lambda m: apply_rope_scaling(m, {"method": "yarn", "factor": 4.0}),
        revert_rope_scaling,
        lambda m: _same_weights(
            _llama(
                1,
                {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
                4 * L0,
            ),
            m,
        ),  # fmt: skip
    ),
    Patch(
        "logn",
        _llama,
        lambda m: apply_rope_scaling(
            m, {"method": "dynamic-ntk", "ntk_variant": "qwen", "logn": True}
        ),
        revert_rope_scaling,
        lambda m: _same_weights(_logn_reference(1), m),
    ),
    Patch(
        "fused-rope-kernel",
        _llama,
        lambda m: apply_kernels(m, _KERNEL_ROPE, MemoryConfig(), force_triton=True),
        revert_kernels,
        None,
        grads=True,
        tokens=12,
    ),
    Patch("tiled-mlp", _llama, lambda m: apply_tiled_mlp(m, 8), revert_tiled_mlp, None, grads=True),
    Patch(
        "tiled-mlp-norm",
        _llama,
        lambda m: apply_tiled_mlp(m, 8, with_norm=True),
        revert_tiled_mlp,
        None,
        grads=True,
    ),
    Patch("lean-rmsnorm", _lora, apply_lean_rmsnorm, revert_lean_rmsnorm, None, (0, 0), True),
    Patch(
        "lean-lora-dropout",
        _lora,
        apply_lean_lora_dropout,
        revert_lean_lora_dropout,
        None,
        grads=True,
    ),  # fmt: skip
    Patch(
        "bf16-residual",
        _qlora_prepared,
        lambda m: apply_bf16_residual(m, torch.bfloat16),
        revert_bf16_residual,
        None,
        (0.05, 0.05),
        autocast=True,
    ),
]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, ids: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids).logits.float()


def _grads(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _structure(model: nn.Module) -> list[tuple]:
    """What a patch may change: module types, instance attributes, hooks, parameter dtypes."""
    skip = {"_parameters", "_buffers", "_modules", "training"}
    return [
        (
            name,
            type(m).__name__,
            tuple(sorted(k for k in vars(m) if k not in skip and not k.startswith("_forward_"))),
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            tuple(str(p.dtype) for p in m.parameters(recurse=False)),
        )
        for name, m in model.named_modules()
    ]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_exact(model: nn.Module, ids, case: Patch, logits, structure, state) -> None:
    assert torch.equal(_logits(model, ids, case.autocast), logits)
    assert _structure(model) == structure
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k


@pytest.mark.parametrize("case", PATCHES, ids=[p.name for p in PATCHES])
def test_apply_matches_the_reference_and_is_live(case: Patch, ids):
    ids = ids[:, : case.tokens]
    model = case.build(0)
    before = _structure(model)
    reference = case.reference(model) if case.reference else case.build(0)
    expected = _logits(reference, ids, case.autocast)
    case.apply(model)
    assert _structure(model) != before, "apply changed nothing"
    rtol, atol = case.tol
    torch.testing.assert_close(_logits(model, ids, case.autocast), expected, rtol=rtol, atol=atol)
    if case.grads:
        got, want = _grads(model, ids), _grads(reference, ids)
        assert got.keys() == want.keys() and got
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", PATCHES, ids=[p.name for p in PATCHES])
def test_revert_is_bit_exact(case: Patch, ids):
    ids = ids[:, : case.tokens]
    model = case.build(0)
    logits, structure, state = _logits(model, ids, case.autocast), _structure(model), _state(model)
    case.apply(model)
    _logits(model, ids, case.autocast)  # run the patched model once (caches, dynamic scales)
    case.revert(model)
    _assert_bit_exact(model, ids, case, logits, structure, state)


@pytest.mark.parametrize("case", PATCHES, ids=[p.name for p in PATCHES])
def test_apply_twice_is_idempotent(case: Patch, ids):
    ids = ids[:, : case.tokens]
    model = case.build(0)
    logits, structure, state = _logits(model, ids, case.autocast), _structure(model), _state(model)
    case.apply(model)
    once, patched = _logits(model, ids, case.autocast), _structure(model)
    case.apply(model)
    assert _structure(model) == patched
    assert torch.equal(_logits(model, ids, case.autocast), once)
    case.revert(model)  # one revert undoes both
    _assert_bit_exact(model, ids, case, logits, structure, state)


@pytest.mark.parametrize("case", PATCHES, ids=[p.name for p in PATCHES])
def test_a_second_instance_neither_leaks_nor_is_leaked_into(case: Patch, ids):
    ids = ids[:, : case.tokens]
    first, second = case.build(0), case.build(0)
    plain = _logits(second, ids, case.autocast)
    plain_structure = _structure(second)
    case.apply(first)
    patched, patched_structure = _logits(first, ids, case.autocast), _structure(first)
    assert torch.equal(_logits(second, ids, case.autocast), plain)  # the patch stays on `first`
    assert _structure(second) == plain_structure
    case.apply(second)
    case.revert(second)  # applying and reverting the other leaves `first` patched
    assert _structure(first) == patched_structure
    assert torch.equal(_logits(first, ids, case.autocast), patched)
    assert torch.equal(_logits(second, ids, case.autocast), plain)
    case.revert(first)
    assert torch.equal(_logits(first, ids, case.autocast), plain)
