"""Chunked linear cross-entropy vs. ``F.cross_entropy`` on full logits (torch and Triton paths)."""

from __future__ import annotations

import os
import weakref

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the CPU interpreter here

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from longqa.core.errors import LongqaError
from longqa.ops.chunked_ce import chunked_linear_cross_entropy

BACKENDS = ["torch", "triton"]


def _reference(hidden, weight, labels, bias=None, ignore_index=-100):
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _problem(n=37, h=16, v=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::3] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
def test_fp32_loss_and_grads_match_reference(backend, chunk):
    hidden, weight, labels = _problem()
    h1, w1, h2, w2 = _leaf(hidden), _leaf(weight), _leaf(hidden), _leaf(weight)
    loss = chunked_linear_cross_entropy(h1, w1, labels, chunk_size=chunk, backend=backend)
    ref = _reference(h2, w2, labels)
    (loss * 3.0).backward()  # grad_output != 1 must scale the stored gradients
    (ref * 3.0).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_custom_ignore_index_and_frozen_weight(backend):
    hidden, weight, labels = _problem(n=21, v=33, seed=1)
    labels = torch.where(labels == -100, torch.full_like(labels, 7), labels)
    labels[:4] = -1
    bias = torch.randn(33)
    h1, b1, h2, b2 = _leaf(hidden), _leaf(bias), _leaf(hidden), _leaf(bias)
    loss = chunked_linear_cross_entropy(
        h1, weight, labels, bias=b1, ignore_index=-1, chunk_size=5, backend=backend
    )
    ref = _reference(h2, weight, labels, bias=b2, ignore_index=-1)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-5, atol=1e-6)
    assert weight.grad is None  # frozen head: no gradient computed or stored


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_tolerance(backend, dtype):
    hidden, weight, labels = _problem(n=29, h=32, v=70, dtype=dtype, seed=2)
    h1, w1 = _leaf(hidden), _leaf(weight)
    h2, w2 = _leaf(hidden.float()), _leaf(weight.float())
    loss = chunked_linear_cross_entropy(h1, w1, labels, chunk_size=6, backend=backend)
    ref = _reference(h2, w2, labels)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32 and h1.grad.dtype == dtype and w1.grad.dtype == dtype
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(h1.grad.float(), h2.grad, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(w1.grad.float(), w2.grad, rtol=2e-2, atol=2e-3)


def test_sum_reduction_batched_input_and_no_grad():
    hidden, weight, labels = _problem(n=24, seed=3)
    loss = chunked_linear_cross_entropy(
        hidden.view(2, 12, -1), weight, labels.view(2, 12), reduction="sum", backend="torch"
    )
    ref = F.cross_entropy(hidden @ weight.t(), labels, reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    h1 = _leaf(hidden)
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(h1, weight, labels, chunk_size=5)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, _reference(hidden, weight, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_gives_zero_loss_and_zero_grads(backend):
    hidden, weight, _ = _problem(n=9)
    labels = torch.full((9,), -100)
    h1 = _leaf(hidden)
    loss = chunked_linear_cross_entropy(h1, weight, labels, chunk_size=4, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(h1.grad) == 0


class _LargestAllocation(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_full_logits():
    n, h, v, chunk = 64, 8, 200, 16
    hidden, weight, labels = _problem(n=n, h=h, v=v, seed=4)
    h1, w1 = _leaf(hidden), _leaf(weight)
    with _LargestAllocation() as mode:
        chunked_linear_cross_entropy(h1, w1, labels, chunk_size=chunk, backend="torch").backward()
    assert mode.largest <= chunk * v < n * v
    with _LargestAllocation() as mode:
        _reference(_leaf(hidden), _leaf(weight), labels).backward()
    assert mode.largest >= n * v  # the probe does see a full logits tensor when there is one


class _LiveBlocks(TorchDispatchMode):
    """Most tensors of at least ``numel`` elements alive at once (seen at each op's output)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.refs, self.most = numel, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel:
                self.refs[t.data_ptr()] = weakref.ref(t)
        self.most = max(self.most, sum(r() is not None for r in self.refs.values()))
        return out


def test_torch_backend_holds_one_logits_block_at_a_time():
    n, h, v, chunk = 64, 8, 200, 16
    hidden, weight, labels = _problem(n=n, h=h, v=v, seed=5)
    with _LiveBlocks(chunk * v) as mode:
        loss = chunked_linear_cross_entropy(_leaf(hidden), weight, labels, chunk_size=chunk,
                                            backend="torch")  # fmt: skip
    assert mode.most == 1  # the gradient is built in place in the logits block
    with _LiveBlocks(chunk * v) as mode:  # the out-of-place softmax the probe must catch
        z = hidden[:chunk] @ weight.t()
        grad = torch.exp(z - torch.logsumexp(z, dim=-1, keepdim=True))
    assert mode.most == 3 and grad.shape == (chunk, v) and loss.isfinite()


def test_bad_input_is_a_clear_error():
    hidden, weight, labels = _problem(n=6, v=10)
    labels[2] = 10
    with pytest.raises(LongqaError, match="label 10 outside"):
        chunked_linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(LongqaError, match="shapes do not match"):
        chunked_linear_cross_entropy(hidden, weight[:, :3], labels)
    with pytest.raises(LongqaError, match="backend"):
        chunked_linear_cross_entropy(hidden, weight, labels.clamp(max=9), backend="cuda")


def test_triton_kernel_writes_every_gradient_element():
    from longqa.ops.ce_triton import ce_loss_and_grad_inplace

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, 1500, generator=g)  # > one 1024-column block, ragged tail
    labels = torch.tensor([3, -100, 1499, 0, 1024])
    expected_loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    work = _leaf(logits)
    F.cross_entropy(work, labels, ignore_index=-100, reduction="sum").backward()
    out = logits.clone()
    loss = ce_loss_and_grad_inplace(out, labels, torch.tensor(1.0))
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, work.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_triton_matches_reference(monkeypatch, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, labels = _problem(n=2048, h=256, v=32000, dtype=dtype, seed=6)
    hidden, weight, labels = hidden.cuda(), weight.cuda(), labels.cuda()
    h1, w1, h2, w2 = _leaf(hidden), _leaf(weight), _leaf(hidden.float()), _leaf(weight.float())
    loss = chunked_linear_cross_entropy(h1, w1, labels, chunk_size=512)
    ref = _reference(h2, w2, labels)
    loss.backward()
    ref.backward()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h1.grad.float(), h2.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w1.grad.float(), w2.grad, rtol=tol, atol=tol)
