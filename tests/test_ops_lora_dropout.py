"""Lean LoRA dropout (``kernels.lean_lora_dropout``): dropout inside ``lora_A``, input saved once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longqa.config.recipe import KernelsConfig, MemoryConfig, load_recipe
from longqa.ops.lora_dropout import draw_mask, dropout_linear, pack_mask, unpack_mask
from longqa.patch.kernels import apply_kernels, revert_kernels
from longqa.patch.lora_dropout import (
    apply_lean_lora_dropout,
    lora_dropout_pairs,
    revert_lean_lora_dropout,
)
from tests.tiny import tiny_llama_config, with_lora


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 64), (1, 7, 24)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.3
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == shape[-1] // 8
    assert torch.equal(unpack_mask(packed), mask)


@pytest.mark.parametrize(
    ("shape", "autocast"),
    [((2, 13, 64), False), ((1, 9, 20), False), ((2, 13, 64), True), ((37, 16), True)],
)
def test_forward_and_gradients_equal_dropout_then_linear_with_the_same_mask(shape, autocast):
    """Same RNG state → same mask as :func:`draw_mask`; output and both gradients equal
    ``F.linear(x · mask / (1 − p), A)`` run by autograd (under bf16 autocast too); hidden sizes
    not a multiple of 8 keep a bool mask."""
    p = 0.25
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float32)
    w = torch.randn(4, shape[-1]) * 0.1
    g = torch.randn(*shape[:-1], 4)

    def run(lean: bool):
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if lean:
                y = dropout_linear(xi, wi, p, training=True)
            else:
                y = F.linear(xi * draw_mask(xi, p) * (1 / (1 - p)), wi)
        y.backward(g.to(y.dtype))
        return y.detach(), xi.grad, wi.grad

    y0, dx0, dw0 = run(False)
    y1, dx1, dw1 = run(True)
    assert y1.dtype == (torch.bfloat16 if autocast else torch.float32)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(dx1, dx0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dw1, dw0, rtol=1e-5, atol=1e-6)


def test_keeps_one_minus_p_and_is_plain_linear_in_eval():
    x, w = torch.ones(200, 64), torch.eye(64)
    torch.manual_seed(1)
    y = dropout_linear(x, w, 0.3, training=True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01  # 12,800 Bernoulli draws: 4 standard deviations ~ 0.016
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert torch.equal(dropout_linear(x, w, 0.3, training=False), F.linear(x, w))


def test_saves_the_input_and_a_packed_mask_not_a_copy():
    x = torch.randn(1, 256, 64, requires_grad=True)
    w = torch.randn(16, 64, requires_grad=True)

    def saved(fn) -> int:
        seen: dict[int, int] = {}

        def pack(t):  # noqa: ANN001, ANN202
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = [fn() for _ in range(3)]  # q, k and v read the same input; graphs kept alive
        for t in (x, w):
            seen.pop(t.untyped_storage().data_ptr(), None)
        del outs
        return sum(seen.values())

    plain = saved(lambda: F.linear(F.dropout(x, 0.1, True), w))
    lean = saved(lambda: dropout_linear(x, w, 0.1, True))
    assert lean == 3 * 256 * 64 // 8  # three packed masks; x itself is the caller's
    assert plain >= 3 * 256 * 64 * (4 + 1)  # three dropped-out fp32 copies and bool masks


def _model(dropout: float):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation="eager"))
    return with_lora(model, r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_patched_model_equals_peft_with_the_same_masks(checkpointing, monkeypatch):
    """With the masks drawn by one deterministic rule on both sides, the patched model's loss and
    every LoRA gradient equal peft's own dropout + lora_A; checkpointing's recompute redraws the
    same masks."""
    import longqa.ops.lora_dropout as ops

    def rule(x, p):  # a fixed pattern per call, as the RNG would give per call
        n = torch.arange(x.numel()).reshape(x.shape)
        return (n * 2654435761 + x.shape[-2]) % 7 != 0

    monkeypatch.setattr(ops, "draw_mask", rule)

    class PatternDropout(torch.nn.Dropout):
        def forward(self, x):  # noqa: ANN001, ANN201
            return x * rule(x, self.p) * (1 / (1 - self.p)) if self.training else x

    ids = torch.randint(0, 128, (1, 21), generator=torch.Generator().manual_seed(2))

    def run(lean: bool):
        model = _model(0.1)
        base = model.get_base_model()
        if checkpointing:
            base.activation_checkpointing_enable({"use_reentrant": False})
            base.enable_input_require_grads()
        model.train()
        if lean:
            notes = apply_kernels(base, KernelsConfig(chunked_ce=False, lean_lora_dropout=True),
                                  MemoryConfig())  # fmt: skip
            assert notes == ["lean LoRA dropout on (14 adapted linears)"]
        else:
            for m in model.modules():
                for name, d in list(getattr(m, "lora_dropout", {}).items()):
                    m.lora_dropout[name] = PatternDropout(d.p)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = run(False)
    loss, got = run(True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys()
    for name, want in ref.items():
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_apply_revert_skip_and_recipe_switch():
    model = _model(0.1)
    base = model.get_base_model()
    assert len(lora_dropout_pairs(base)) == 14
    assert apply_lean_lora_dropout(base) == "lean LoRA dropout on (14 adapted linears)"
    assert revert_lean_lora_dropout(base) == 14
    for m in base.modules():
        assert not any(k.startswith("_longqa") or k == "forward" for k in m.__dict__), m
    no_drop = _model(0.0).get_base_model()
    assert apply_lean_lora_dropout(no_drop).startswith("lean LoRA dropout skipped")
    model.eval()  # eval: the patched model is peft's own, bit for bit
    ids = torch.randint(0, 128, (1, 9))
    ref = model(input_ids=ids).logits
    apply_kernels(base, KernelsConfig(lean_lora_dropout=True), MemoryConfig())
    assert torch.equal(model(input_ids=ids).logits, ref)
    revert_kernels(base)
    assert load_recipe(
        "llama3-8b-abf128k", ["kernels.lean_lora_dropout=true"]
    ).kernels.lean_lora_dropout


@pytest.mark.parametrize("autocast", [False, True])
def test_pieces_give_the_one_piece_result(autocast, monkeypatch):
    """Forward and backward over CHUNK tokens at a time (5 here, 2 × 23 tokens) equal one piece."""
    import longqa.ops.lora_dropout as ops

    x, w = torch.randn(2, 23, 64), torch.randn(8, 64) * 0.1
    g = torch.randn(2, 23, 8)

    def run():
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = dropout_linear(xi, wi, 0.2, training=True)
        y.backward(g.to(y.dtype))
        return y.detach().float(), xi.grad, wi.grad

    whole = run()
    monkeypatch.setattr(ops, "CHUNK", 5)
    pieces = run()
    for got, want in zip(pieces, whole, strict=True):
        if autocast:  # bf16 matmuls: each piece's A gradient rounded to bf16, then summed in fp32
            assert float((got - want).norm() / want.norm()) < 1e-2
        else:  # only the order of the sums differs
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
