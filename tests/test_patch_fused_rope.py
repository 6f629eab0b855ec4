"""The fused RoPE patch is live, not only installed: in every family it supports, a real forward and
backward runs the Triton kernel (CPU interpreter) once per layer and matches the unpatched model,
whichever form transformers binds ``apply_rotary_pos_emb`` in (hub-kernel ``Func`` module with the
``kernels`` package, plain function without it, ``USE_HUB_KERNELS=0``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import MethodType

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from tiny import TINY_SHAPE

from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.patch import fused_rope
from longqa.patch.families import FAMILIES, private_rope_module
from longqa.patch.kernels import apply_kernels, revert_kernels

ROPE_ONLY = KernelsConfig(rope=True, chunked_ce=False)
FUSED = [name for name, fam in FAMILIES.items() if fam.fused_rope]


def _model(name: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(name, **TINY_SHAPE)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()


def _attention_layers(model) -> list:
    return [layer.self_attn for layer in model.model.layers]


@pytest.mark.parametrize("name", FUSED)
def test_kernel_runs_in_forward_and_backward_of_each_family(name):
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))
    ref = _model(name)
    ref(input_ids=ids, labels=ids).loss.backward()
    model = _model(name)
    notes = apply_kernels(model, ROPE_ONLY, MemoryConfig(), force_triton=True)
    assert notes == ["fused RoPE on (2 attention layers)"]
    before = dict(fused_rope.FUSED_ROPE_CALLS)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    # the kernel ran once per layer; nothing went around it to the eager rotation
    assert fused_rope.FUSED_ROPE_CALLS["fused"] == before["fused"] + 2
    assert fused_rope.FUSED_ROPE_CALLS["fallback"] == before["fallback"]
    torch.testing.assert_close(loss, ref(input_ids=ids, labels=ids).loss, rtol=1e-5, atol=1e-6)
    for (pname, p), r in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-6, msg=pname)
    revert_kernels(model)
    before = dict(fused_rope.FUSED_ROPE_CALLS)
    with torch.no_grad():
        model(input_ids=ids)
    assert fused_rope.FUSED_ROPE_CALLS == before  # reverted: the library's own path again


def test_revert_restores_a_kernelized_forward_exactly_and_apply_is_idempotent():
    """A hub kernel ``kernels.kernelize`` put in an attention's slot comes back as the same object."""
    from transformers.models.llama import modeling_llama

    model = _model("llama")
    if private_rope_module(model.model.layers[0].self_attn, modeling_llama) is None:
        pytest.skip("apply_rotary_pos_emb is a plain function here (no `kernels` package)")
    calls = []
    eager_rope = FAMILIES["llama"].rope_function()

    def hub_kernel(self, q, k, cos, sin, unsqueeze_dim=1):  # noqa: ANN001, ANN202
        calls.append(1)
        return eager_rope(q, k, cos, sin, unsqueeze_dim)

    privates = [private_rope_module(a, modeling_llama) for a in _attention_layers(model)]
    kernelized = [MethodType(hub_kernel, p) for p in privates]
    for p, fwd in zip(privates, kernelized, strict=True):
        p.forward = fwd  # what kernels.kernelize does with a hub layer
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    assert len(calls) == 2  # the stand-in hub kernel is what the attention calls
    state = fused_rope.apply_fused_rope(model)
    assert state["route"] == "hub-kernel slot"
    assert fused_rope.apply_fused_rope(model)["private"] == []  # a second apply changes nothing
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert len(calls) == 2  # the fused kernel took its place
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fused_rope.revert_fused_rope(state)
    assert [p.__dict__["forward"] for p in privates] == kernelized  # the same bound methods


_ROUTE_SCRIPT = """
import json, os, sys
if sys.argv[1] == "no-kernels":
    sys.modules["kernels"] = None  # as if the package were not installed
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from longqa.config.recipe import KernelsConfig, MemoryConfig
from longqa.patch import fused_rope
from longqa.patch.kernels import apply_kernels, revert_kernels
shape = json.loads(sys.argv[2])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**shape)).eval()
ids = torch.randint(0, 128, (2, 9))
with torch.no_grad():
    want = model(input_ids=ids).logits
original = modeling_llama.apply_rotary_pos_emb
apply_kernels(model, KernelsConfig(rope=True, chunked_ce=False), MemoryConfig(), force_triton=True)
with torch.no_grad():
    got = model(input_ids=ids).logits
revert_kernels(model)
print(json.dumps({
    "form": type(original).__name__,
    "fused": fused_rope.FUSED_ROPE_CALLS["fused"],
    "max_diff": (got - want).abs().max().item(),
    "restored": modeling_llama.apply_rotary_pos_emb is original,
}))
"""


@pytest.mark.parametrize(
    ("mode", "env", "form"),
    [("no-kernels", {}, "function"), ("hub-off", {"USE_HUB_KERNELS": "0"}, None)],
)
def test_other_binding_forms_in_a_fresh_process(mode, env, form):
    root = Path(__file__).resolve().parents[1]
    run_env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root), **env}
    out = subprocess.run(
        [sys.executable, "-c", _ROUTE_SCRIPT, mode, json.dumps(TINY_SHAPE)],
        capture_output=True, text=True, env=run_env, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if form is not None:
        assert got["form"] == form  # without `kernels` the name is a plain function
    assert got["fused"] == 2 and got["restored"] and got["max_diff"] < 1e-5, got
