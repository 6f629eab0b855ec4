"""Tiled MLP on CUDA: bf16 with a 4-bit NF4 MLP + LoRA, and the memory it saves (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _nf4_lora_mlp(hidden=1024, inter=4096):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers.models.llama.modeling_llama import LlamaMLP

    from tests.tiny import tiny_llama_config

    torch.manual_seed(0)
    mlp = LlamaMLP(tiny_llama_config(hidden_size=hidden, intermediate_size=inter)).cuda()
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = getattr(mlp, name)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                              compute_dtype=torch.bfloat16, quant_type="nf4")  # fmt: skip
        q.weight = bnb.nn.Params4bit(lin.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        setattr(mlp, name, q.cuda())

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

    model = get_peft_model(Wrap(), LoraConfig(r=16, target_modules=["gate_proj", "up_proj",
                                                                      "down_proj"]))  # fmt: skip
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model.base_model.model.mlp


def test_cuda_nf4_lora_tiled_matches_untiled_and_saves_memory():
    from longqa.ops.tiled_mlp import tiled_mlp

    mlp = _nf4_lora_mlp()
    params = [p for p in mlp.parameters() if p.requires_grad]
    x = torch.randn(1, 16381, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)

    def run(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn()
        grads = torch.autograd.grad(out, [x, *params], g)
        return out, grads, torch.cuda.max_memory_allocated() - before

    ref, ref_grads, ref_peak = run(lambda: mlp(x))
    out, grads, peak = run(lambda: tiled_mlp(mlp.forward, x, 1024, params))
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-3)
    assert peak < 0.5 * ref_peak, (peak, ref_peak)
