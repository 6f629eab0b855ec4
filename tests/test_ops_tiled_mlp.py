"""Sequence-tiled MLP: identical to the untiled MLP, forward and backward, with LoRA on the MLP."""

from __future__ import annotations

import pytest
import torch

from longqa.config.recipe import KernelsConfig, MemoryConfig, load_recipe
from longqa.core.errors import LongqaError
from longqa.ops.tiled_mlp import tile_bounds, tiled_mlp
from longqa.patch.kernels import applied_kernels, apply_kernels, revert_kernels
from longqa.patch.tiled_mlp import apply_tiled_mlp, mlp_modules, revert_tiled_mlp, tiled_mlp_tile
from tests.tiny import tiny_llama_config, with_lora

LORA_MLP = ["gate_proj", "up_proj", "down_proj"]


def _lora_model(dtype=torch.float64, dropout=0.0, targets=LORA_MLP, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation="eager")).to(dtype)
    return with_lora(model, r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets)


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}


def test_tile_bounds_cover_the_sequence():
    assert tile_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert tile_bounds(8, 8) == [(0, 8)]
    assert tile_bounds(3, 5) == [(0, 3)]
    with pytest.raises(ValueError):
        tile_bounds(4, 0)


@pytest.mark.parametrize(("seq", "tile"), [(37, 8), (37, 5), (64, 16), (7, 1), (9, 9)])
def test_tiled_matches_untiled_mlp_with_lora(seq, tile):
    model = _lora_model()
    mlp = mlp_modules(model)[0]
    params = [p for p in mlp.parameters() if p.requires_grad]
    assert len(params) == 6  # LoRA A and B of gate, up, down
    torch.manual_seed(1)
    x = torch.randn(2, seq, 64, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, seq, 64, dtype=torch.float64)

    ref = mlp(x)
    ref_grads = torch.autograd.grad(ref, [x, *params], g)
    out = tiled_mlp(mlp.forward, x, tile, params)
    grads = torch.autograd.grad(out, [x, *params], g)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_only_the_input_is_saved_for_backward():
    """Untiled, autograd keeps ~5 x intermediate values per token; tiled, only the input."""
    model = _lora_model(dtype=torch.float32, targets=["gate_proj"])
    mlp = mlp_modules(model)[0]
    params = [p for p in mlp.parameters() if p.requires_grad]
    x = torch.randn(1, 256, 64, requires_grad=True)

    def saved_numel(fn) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            seen[id(t)] = t.numel()  # parameters are counted once; tensors of the graph all
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    plain = saved_numel(lambda: mlp(x))
    tiled = saved_numel(lambda: tiled_mlp(mlp.forward, x, 16, params))
    weights = sum(p.numel() for p in mlp.parameters())
    assert plain - weights >= 3 * 256 * 128  # gate, up, act(gate) (intermediate 128) at least
    assert tiled <= 256 * 64 + sum(p.numel() for p in params)  # x and the LoRA weights only


def test_backward_recomputes_under_the_forward_autocast():
    model = _lora_model(dtype=torch.float32)
    mlp = mlp_modules(model)[0]
    params = [p for p in mlp.parameters() if p.requires_grad]
    x = torch.randn(1, 29, 64, requires_grad=True)
    g = torch.randn(1, 29, 64)
    seen: list[bool] = []

    def fn(t):
        seen.append(torch.is_autocast_enabled("cpu"))
        return mlp(t)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = mlp(x)
        out = tiled_mlp(fn, x, 8, params)
    assert out.dtype == ref.dtype == torch.bfloat16 and seen == [True] * 4
    ref_grads = torch.autograd.grad(ref, [x, *params], g)
    grads = torch.autograd.grad(out, [x, *params], g)  # backward outside autocast, as in training
    assert seen == [True] * 8  # the 4 recomputed tiles ran in bf16 too
    for got, want in zip(grads, ref_grads, strict=True):  # equal up to bf16 rounding
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_tiled_without_grad_and_bad_shape():
    model = _lora_model(dtype=torch.float32)
    mlp = mlp_modules(model)[0]
    x = torch.randn(1, 33, 64)
    with torch.no_grad():
        torch.testing.assert_close(tiled_mlp(mlp.forward, x, 4), mlp(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[batch, seq, hidden\]"):
        tiled_mlp(mlp.forward, x[0], 4)


def test_lora_dropout_masks_replay_in_backward():
    """With dropout, the recomputed tiles draw the forward's masks: the gradients equal those of
    the same tiles computed with ordinary autograd from the same random state."""
    model = _lora_model(dropout=0.5).train()
    mlp = mlp_modules(model)[0]
    params = [p for p in mlp.parameters() if p.requires_grad]
    x = torch.randn(1, 23, 64, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 23, 64, dtype=torch.float64)

    torch.manual_seed(5)
    ref = torch.cat([mlp(x[:, a:b]) for a, b in tile_bounds(23, 6)], dim=1)
    ref_grads = torch.autograd.grad(ref, [x, *params], g)
    torch.manual_seed(5)
    out = tiled_mlp(mlp.forward, x, 6, params)
    grads = torch.autograd.grad(out, [x, *params], g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.manual_seed(5)
    untiled = mlp(x)
    assert not torch.allclose(untiled, out)  # dropout was really on


@pytest.mark.parametrize("checkpointing", [False, True])
def test_patched_model_matches_unpatched_loss_and_grads(checkpointing, monkeypatch):
    import longqa.patch.tiled_mlp as patch_mod

    calls: list[int] = []

    def spy(fn, x, tile, params=()):
        calls.append(x.shape[1])
        return tiled_mlp(fn, x, tile, params)

    monkeypatch.setattr(patch_mod, "tiled_mlp", spy)
    targets = ["q_proj", "v_proj", *LORA_MLP]
    ids = torch.randint(0, 128, (1, 45), generator=torch.Generator().manual_seed(3))

    def run(tiled: bool):
        model = _lora_model(targets=targets)
        base = model.get_base_model()
        if checkpointing:
            base.activation_checkpointing_enable({"use_reentrant": False})
            base.enable_input_require_grads()
        model.train()
        if tiled:
            notes = apply_kernels(base, KernelsConfig(chunked_ce=False, tiled_mlp=True,
                                                      tiled_mlp_tile=7), MemoryConfig())  # fmt: skip
            assert notes == ["tiled MLP on (2 layers, 7-token tiles)"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), _lora_grads(model), model

    ref_loss, ref_grads, _ = run(False)
    assert calls == []
    loss, grads, model = run(True)
    assert calls and set(calls) == {45}  # every MLP call of the patched model went through tiles
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert ref_grads.keys() == grads.keys() and len(grads) == 2 * 2 * len(targets)
    for name, want in ref_grads.items():
        assert want.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], want, rtol=1e-9, atol=1e-12, msg=name)
    base = model.get_base_model()
    assert tiled_mlp_tile(base) == 7
    revert_kernels(base)
    assert tiled_mlp_tile(base) is None and applied_kernels(base) == []
    assert all("forward" not in m.__dict__ for m in mlp_modules(base))


def test_apply_default_tile_revert_and_errors():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    assert apply_tiled_mlp(model) == "tiled MLP on (2 layers, 64-token tiles)"  # hidden size
    assert tiled_mlp_tile(model) == 64
    assert revert_tiled_mlp(model) == 2 and tiled_mlp_tile(model) is None
    with pytest.raises(LongqaError, match="tiled_mlp_tile"):
        apply_tiled_mlp(model, tile=-1)
    assert apply_tiled_mlp(torch.nn.Linear(2, 2)).startswith("tiled MLP skipped")


def test_recipe_switch_validates():
    r = load_recipe(
        "smollm2-135m-yarn16k", ["kernels.tiled_mlp=true", "kernels.tiled_mlp_tile=512"]
    )
    assert r.kernels.tiled_mlp and r.kernels.tiled_mlp_tile == 512
    with pytest.raises(LongqaError, match="tiled_mlp_tile"):
        load_recipe("smollm2-135m-yarn16k", ["kernels.tiled_mlp_tile=-3"])


NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]


@pytest.mark.parametrize(
    ("trained_norms", "lean", "checkpointing"),
    [(True, False, True), (True, True, True), (False, True, False), (True, False, False)],
)
def test_norm_inside_tiles_matches_unpatched_loss_and_grads(trained_norms, lean, checkpointing):
    """``kernels.tiled_mlp_norm``: the post-attention norm computed tile by tile inside the MLP
    gives the unpatched model's loss and every trainable gradient (LoRA and the norms' weights)."""
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 128, (1, 45), generator=torch.Generator().manual_seed(3))
    targets = ["q_proj", "v_proj", *LORA_MLP]

    def run(fused: bool):
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_llama_config(attn_implementation="eager")).double()
        for name, p in model.named_parameters():  # norms away from 1 so their gradient matters
            if "norm" in name:
                torch.nn.init.uniform_(p, 0.5, 1.5)
        model = with_lora(model, r=4, lora_alpha=8, target_modules=targets,
                          modules_to_save=NORMS if trained_norms else None)  # fmt: skip
        base = model.get_base_model()
        if checkpointing:
            base.activation_checkpointing_enable({"use_reentrant": False})
            base.enable_input_require_grads()
        model.train()
        kernels = KernelsConfig(chunked_ce=False, tiled_mlp=True, tiled_mlp_tile=7,
                                tiled_mlp_norm=fused, lean_rmsnorm=lean)  # fmt: skip
        notes = apply_kernels(base, kernels, MemoryConfig())
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads, base, notes

    ref_loss, ref_grads, _, _ = run(False)
    loss, grads, base, notes = run(True)
    assert notes[-1] == "tiled MLP on (2 layers, 7-token tiles, post-attention norm inside)"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    assert sum("post_attention_layernorm" in n for n in grads) == (2 if trained_norms else 0)
    for name, want in ref_grads.items():
        assert want.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], want, rtol=1e-9, atol=1e-12, msg=name)
    layers = base.model.layers
    assert all(type(m).__name__ == "LlamaDecoderLayer" for m in layers)
    state = {k for k in base.state_dict() if "_longqa" in k}
    assert not state  # the norm reference is not a submodule: checkpoints are unchanged
    revert_kernels(base)
    for layer in layers:
        for m in layer.modules():
            assert not any(k.startswith("_longqa") or k == "forward" for k in m.__dict__), m


def test_norm_inside_tiles_stacks_on_lean_rmsnorm_and_reverts_in_order():
    from transformers import LlamaForCausalLM

    from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
    from longqa.patch.tiled_mlp import norm_in_tiled_mlp

    model = LlamaForCausalLM(tiny_llama_config())
    norm = model.model.layers[0].post_attention_layernorm
    x = torch.randn(1, 5, 64)
    apply_lean_rmsnorm(model)
    lean_forward = norm.forward
    assert apply_tiled_mlp(model, 4, with_norm=True).endswith("post-attention norm inside)")
    assert norm_in_tiled_mlp(model)
    assert norm(x) is x  # passes through: the MLP applies it
    revert_tiled_mlp(model)
    assert not norm_in_tiled_mlp(model)
    assert norm.forward == lean_forward  # the lean forward is back
    revert_lean_rmsnorm(model)
    assert "forward" not in norm.__dict__


def test_norm_inside_tiles_needs_tiles_and_a_norm_per_mlp():
    with pytest.raises(LongqaError, match="tiled_mlp_norm"):
        load_recipe("smollm2-135m-yarn16k", ["kernels.tiled_mlp_norm=true"])
    r = load_recipe(
        "smollm2-135m-yarn16k", ["kernels.tiled_mlp=true", "kernels.tiled_mlp_norm=true"]
    )
    assert r.kernels.tiled_mlp_norm

    class MLP(torch.nn.Module):  # a gated MLP with no decoder layer around it
        def __init__(self):
            super().__init__()
            self.gate_proj = self.up_proj = self.down_proj = torch.nn.Linear(2, 2)

    with pytest.raises(LongqaError, match="1 gated MLPs but 0 decoder layers"):
        apply_tiled_mlp(MLP(), 2, with_norm=True)
