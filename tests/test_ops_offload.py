"""Activation offloading hook logic on CPU (``simulate=True`` copies instead of transfers)."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import tiny_llama_config
from transformers import LlamaForCausalLM

from longqa.ops.offload import ActivationOffloader


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_llama_config(num_hidden_layers=3)
    return LlamaForCausalLM(cfg).train()


def _grads(model, ids):
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_pack_skips_small_tensors_and_parameters_and_reuses_shared_tensors():
    off = ActivationOffloader(min_bytes=64, simulate=True)
    small = torch.ones(4)  # 16 bytes
    assert off.pack(small) is small
    param = torch.nn.Parameter(torch.ones(100))
    assert off.pack(param) is param
    big = torch.arange(100.0)
    rec = off.pack(big)
    assert not isinstance(rec, torch.Tensor)
    assert rec.host.data_ptr() != big.data_ptr()  # a separate copy holds the data
    assert off.pack(big) is rec  # saved twice (e.g. shared by layers): one copy
    assert (off.stats.packed, off.stats.reused, off.stats.kept) == (1, 1, 2)
    out = off.unpack(rec)
    assert torch.equal(out, big) and out.data_ptr() != big.data_ptr()
    assert off.unpack(small) is small


def test_unpack_prefetches_the_previously_packed_record():
    off = ActivationOffloader(min_bytes=0, simulate=True)
    a, b, c = (torch.full((8,), float(i)) for i in range(3))
    ra, rb, rc = off.pack(a), off.pack(b), off.pack(c)
    assert rb.back is None
    assert torch.equal(off.unpack(rc), c)  # backward order: last layer first
    assert rb.back is not None and ra.back is None  # next one already on its way
    assert torch.equal(off.unpack(rb), b) and torch.equal(off.unpack(ra), a)
    assert off.stats.prefetched == 2 and off.stats.unpacked == 3


@pytest.mark.parametrize("reentrant", [False, True])
def test_offloaded_checkpointing_gives_identical_gradients_and_reverts(reentrant):
    model = _tiny_llama()
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    expected = _grads(model, ids)
    layers = model.model.layers
    originals = [layer._gradient_checkpointing_func for layer in layers]

    off = ActivationOffloader(min_bytes=0, simulate=True)
    assert off.install(model) == 3
    assert off.install(model) == 0  # idempotent
    assert all(
        layer._gradient_checkpointing_func is not f
        for layer, f in zip(layers, originals, strict=True)
    )
    got = _grads(model, ids)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    # each layer's input hidden states [2, 16, 64] went out in forward and came back in backward
    assert off.stats.packed == 3 and off.stats.unpacked == 3
    assert off.stats.packed_bytes == 3 * 2 * 16 * 64 * 4

    assert ActivationOffloader.uninstall(model) == 3
    assert all(
        layer._gradient_checkpointing_func is f for layer, f in zip(layers, originals, strict=True)
    )
    before = off.stats.packed
    _grads(model, ids)
    assert off.stats.packed == before  # hooks gone


def test_cpu_model_is_a_noop_with_a_log_line(caplog):
    model = _tiny_llama()
    model.activation_checkpointing_enable()
    with caplog.at_level(logging.INFO, logger="longqa.ops.offload"):
        assert ActivationOffloader().install(model) == 0
    assert "activation offloading skipped: needs CUDA (model is on cpu)" in caplog.text
    assert not hasattr(
        model.model.layers[0]._gradient_checkpointing_func, "_longqa_offload_original"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_offload_matches_and_moves_inputs_to_pinned_host():
    model = _tiny_llama().cuda()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 128, (2, 256), device="cuda")
    expected = _grads(model, ids)
    off = ActivationOffloader(min_bytes=0)
    assert off.install(model) == 3
    got = _grads(model, ids)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)
    assert off.stats.packed == 3 and off.stats.unpacked == 3
