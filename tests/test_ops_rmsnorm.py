"""Lean RMSNorm (``kernels.lean_rmsnorm``): same output and gradients as transformers' norms, less saved."""

from __future__ import annotations

import pytest
import torch

from longqa.ops.rmsnorm import lean_rms_norm
from longqa.patch.families import FAMILIES
from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm, rmsnorm_classes


def _grads(norm: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, lean: bool):
    x = x.detach().clone().requires_grad_(True)
    norm.weight.grad = None
    y = lean_rms_norm(x, norm.weight, norm.variance_epsilon) if lean else norm(x)
    y.backward(g)
    return y.detach(), x.grad, norm.weight.grad.clone()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(
    ("x_dtype", "w_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16,) * 2],
)
def test_same_output_and_gradients_as_each_family_norm(family, x_dtype, w_dtype):
    cls = getattr(FAMILIES[family].modeling(), f"{FAMILIES[family].prefix}RMSNorm")
    torch.manual_seed(0)
    norm = cls(48, eps=1e-6).to(w_dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(2, 37, 48) * 3).to(x_dtype)
    g = torch.randn(2, 37, 48).to(torch.promote_types(x_dtype, w_dtype))
    y0, dx0, dw0 = _grads(norm, x, g, lean=False)
    y1, dx1, dw1 = _grads(norm, x, g, lean=True)
    assert y1.dtype == y0.dtype
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)  # same ops in the same order
    torch.testing.assert_close(dw1, dw0, rtol=1e-5, atol=1e-5)
    if x_dtype == torch.float32:
        torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    else:  # one bf16 rounding of the same fp32 value, at most one ulp apart
        torch.testing.assert_close(dx1, dx0, rtol=8e-3, atol=1e-3)


def test_saves_input_and_rstd_not_the_normalised_values():
    norm = rmsnorm_classes()[0](64)
    x = torch.randn(1, 100, 64, requires_grad=True)

    def saved_bytes(lean: bool) -> int:
        ptrs: dict[int, int] = {}

        def pack(t):  # noqa: ANN001, ANN202
            ptrs[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lean_rms_norm(x, norm.weight, 1e-6) if lean else norm(x)
        ptrs.pop(x.untyped_storage().data_ptr(), None)  # the input: kept by the caller anyway
        ptrs.pop(norm.weight.untyped_storage().data_ptr(), None)
        return sum(ptrs.values())

    assert saved_bytes(lean=False) == 100 * 64 * 4 + 100 * 4  # normalised fp32 + 1/rms
    assert saved_bytes(lean=True) == 100 * 4  # 1/rms only


def test_patch_on_a_lora_model_is_exact_and_reverts():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from longqa.models.load import peft_wrapping
    from longqa.ops.causal_lm import causal_lm_loss
    from tests.tiny import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    model.activation_checkpointing_enable({"use_reentrant": False})
    cfg = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                     modules_to_save=["input_layernorm", "post_attention_layernorm", "norm"])  # fmt: skip
    with peft_wrapping():  # no deprecation warning from peft's checkpointing probe
        model = get_peft_model(model, cfg)
    model.train()
    ids = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(1))

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk_size=16)
        (total / n).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return (total / n).detach(), grads

    loss0, g0 = step()
    note = apply_lean_rmsnorm(model)
    # 2 layers × 2 norms + the final one, each as the original and peft's trained copy
    assert note == "lean RMSNorm on (10 norms)"
    loss1, g1 = step()
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    assert g1.keys() == g0.keys() and any("layernorm" in k for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
    assert revert_lean_rmsnorm(model) == 10
    assert not any("forward" in m.__dict__ for m in model.modules() if type(m) in rmsnorm_classes())


@pytest.mark.parametrize("tokens", [1, 7, 37])
def test_backward_over_token_chunks_gives_the_whole_sequence_gradients(tokens, monkeypatch):
    """The backward runs BACKWARD_CHUNK tokens at a time: with chunks of 3 (uneven last one) the
    input's gradient is bitwise the one-piece backward's, the weight's differs only by the order
    of its sum, and both stay transformers' norm gradients."""
    import longqa.ops.rmsnorm as ops

    cls = rmsnorm_classes()[0]
    torch.manual_seed(1)
    norm = cls(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, g = torch.randn(2, tokens, 24), torch.randn(2, tokens, 24)
    _, dx_hf, dw_hf = _grads(norm, x, g, lean=False)
    _, dx0, dw0 = _grads(norm, x, g, lean=True)  # one piece (BACKWARD_CHUNK > 2 × 37 tokens)
    monkeypatch.setattr(ops, "BACKWARD_CHUNK", 3)
    _, dx1, dw1 = _grads(norm, x, g, lean=True)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=0)
    torch.testing.assert_close(dw1, dw0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx1, dx_hf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw1, dw_hf, rtol=1e-5, atol=1e-5)


def test_out_dtype_is_the_norm_then_a_cast_with_the_cast_gradient(monkeypatch):
    """``out_dtype`` (bf16 residual): output and gradients equal ``norm(x).to(bf16)`` run by
    autograd for a bf16 input and an fp32 weight; the incoming gradient is bf16."""
    import longqa.ops.rmsnorm as ops

    monkeypatch.setattr(ops, "BACKWARD_CHUNK", 5)
    torch.manual_seed(2)
    norm = rmsnorm_classes()[0](48, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(2, 23, 48) * 3).to(torch.bfloat16)
    g = torch.randn(2, 23, 48).to(torch.bfloat16)
    x0 = x.clone().requires_grad_(True)
    y0 = norm(x0).to(torch.bfloat16)
    assert norm(x0).dtype == torch.float32  # why the cast is needed: fp32 weight · bf16 values
    y0.backward(g)
    dw0, norm.weight.grad = norm.weight.grad.clone(), None
    x1 = x.clone().requires_grad_(True)
    y1 = lean_rms_norm(x1, norm.weight, norm.variance_epsilon, out_dtype=torch.bfloat16)
    assert y1.dtype == torch.bfloat16
    torch.testing.assert_close(y1, y0.detach(), rtol=0, atol=0)
    y1.backward(g)
    torch.testing.assert_close(x1.grad, x0.grad, rtol=8e-3, atol=1e-3)  # one bf16 rounding apart
    torch.testing.assert_close(norm.weight.grad, dw0, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the no-grad path casts too
        assert lean_rms_norm(x, norm.weight, 1e-6, out_dtype=torch.bfloat16).dtype == torch.bfloat16
