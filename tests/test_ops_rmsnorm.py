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
