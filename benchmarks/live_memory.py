"""Live tensor bytes on CPU, and stand-ins that give a CPU training step a GPU step's storages.

Usage::

    import sys; sys.path.insert(0, "benchmarks")
    from live_memory import LiveStorageTracker, gpu_like
    tracker = LiveStorageTracker()
    with gpu_like(tracker), tracker, tracker.module_names(model):
        loss = step(model); loss.backward()
    tracker.peak, tracker.at_peak       # bytes; (bytes, where, op, shape, dtype) alive at the peak

:class:`LiveStorageTracker` is a ``TorchDispatchMode`` that follows every storage an operator
creates while it is active (a weak reference on the storage removes the entry when the storage is
freed) and records the peak of their bytes with the live set at that moment, each storage tagged
with the innermost module running (forward or checkpoint recompute) or the autograd node (backward).
Storages made before it started (weights, inputs) and views of them are not counted.

:func:`gpu_like` swaps in, while active, what makes a CPU step store what the GPU step stores:
the fused Triton RoPE's storage behaviour (rotation in place, cos/sin saved; the kernel needs CUDA),
CUDA's ``native_dropout`` (bool mask; torch's CPU path keeps a mask in the input dtype), peft's
``torch.is_autocast_enabled()`` (CUDA's flag) answered with the CPU autocast state, and
bitsandbytes' dequantised 4-bit weights left out of the count (``[out, in]``, constant in the
sequence length; at short lengths they would move the peak away from where it is at long ones).
Used by ``benchmarks/bench_layer_memory.py`` and ``tests/test_plan_measured.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorageTracker(TorchDispatchMode):
    """Bytes of the storages created by operators while active (and still alive), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, str, str, tuple[int, ...], str]] = {}
        self.refs: dict[int, Any] = {}
        self.now = self.peak = 0
        self.at_peak: list[tuple[int, str, str, tuple[int, ...], str]] = []
        self.paused = False
        self.modules: list[str] = []

    def _free(self, key: int, _ref: Any) -> None:
        entry = self.live.pop(key, None)
        self.refs.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def forget(self, t: torch.Tensor) -> None:
        """Stop counting ``t``'s storage (e.g. the layer output: the next layer's stored input)."""
        key = t.untyped_storage().data_ptr()
        entry = self.live.pop(key, None)
        self.refs.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def _tag(self) -> str:
        node = torch._C._current_autograd_node()
        phase = "backward" if node is not None else "forward"
        if self.modules:
            return f"{'recompute' if node is not None else 'forward'}:{self.modules[-1]}"
        return f"{phase}:{node.name() if node is not None else '-'}"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        before = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        if self.paused:
            return out
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in self.live or key in before:
                continue  # empty, already counted, or a view of a tensor made before
            self.live[key] = (st.nbytes(), self._tag(), func.__name__, tuple(t.shape), str(t.dtype))
            self.refs[key] = weakref.ref(st, lambda r, k=key: self._free(k, r))
            self.now += st.nbytes()
            if self.now > self.peak:
                self.peak = self.now
                self.at_peak = list(self.live.values())
        return out

    @contextmanager
    def pause(self) -> Iterator[None]:
        old, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = old

    @contextmanager
    def module_names(self, model: torch.nn.Module) -> Iterator[None]:
        """Tag storages with the innermost running module (hooks on every submodule)."""
        names = {id(m): n for n, m in model.named_modules()}
        pre = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda m, a: self.modules.append(names.get(id(m), type(m).__name__))
        )

        def leave(m: torch.nn.Module, a: Any, o: Any) -> None:  # returns None: output unchanged
            if self.modules:
                self.modules.pop()

        post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def _rope_stand_in(tracker: LiveStorageTracker) -> Any:
    """``apply_rotary_pos_emb`` with the fused kernel's storage behaviour (in place, saves cos/sin)
    and the ``kernels.rope`` dispatcher's cast to the attention's dtype under autocast."""
    from transformers.models.llama.modeling_llama import rotate_half

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c, s = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
        return x.float() * c + rotate_half(x.float()) * s

    class InPlaceRope(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, cos, sin):  # noqa: ANN001, ANN205
            with tracker.pause():
                q.copy_(rotate(q, cos, sin))
                k.copy_(rotate(k, cos, sin))
            torch.autograd.graph.increment_version((q, k))
            ctx.save_for_backward(cos, sin)
            return q, k

        @staticmethod
        def backward(ctx, dq, dk):  # noqa: ANN001, ANN205
            cos, sin = ctx.saved_tensors
            dq_out, dk_out = torch.empty_like(dq), torch.empty_like(dk)
            with tracker.pause():
                dq_out.copy_(rotate(dq, cos, -sin))
                dk_out.copy_(rotate(dk, cos, -sin))
            return dq_out, dk_out, None, None

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):  # noqa: ANN001, ANN202
        from longqa.patch.fused_rope import attention_dtype

        dtype = attention_dtype(q)  # as longqa's dispatcher: fp32 q, k handed over in bf16
        q, k = InPlaceRope.apply(q, k, cos, sin)
        return (q, k) if dtype is None else (q.to(dtype), k.to(dtype))

    return apply_rotary_pos_emb


def _cuda_like_dropout(input, p=0.5, training=True, inplace=False):  # noqa: ANN001, ANN202, A002
    """``F.dropout`` as on CUDA: the fused ``native_dropout`` (saves a bool mask, 1 B/element);
    torch's CPU path instead saves a mask in the input's dtype (4 B/element for fp32)."""
    if not training or p == 0:
        return input
    return torch.native_dropout(input, p, True)[0]


@contextmanager
def gpu_like(tracker: LiveStorageTracker, fused_rope: bool = True) -> Iterator[None]:
    """The stand-ins of the module docstring while active: fused-RoPE storage behaviour, CUDA's
    dropout, peft seeing autocast on, dequantised 4-bit weights not counted."""
    import bitsandbytes.functional as bnb_f
    import transformers.models.llama.modeling_llama as llama

    rope, dropout = llama.apply_rotary_pos_emb, torch.nn.functional.dropout
    dequantize, autocast_enabled = bnb_f.dequantize_4bit, torch.is_autocast_enabled

    def dequantize_4bit(*args: Any, **kwargs: Any) -> torch.Tensor:
        with tracker.pause():
            return dequantize(*args, **kwargs)

    if fused_rope:
        llama.apply_rotary_pos_emb = _rope_stand_in(tracker)
    torch.nn.functional.dropout = _cuda_like_dropout
    bnb_f.dequantize_4bit = dequantize_4bit
    torch.is_autocast_enabled = lambda *a: autocast_enabled(*a) if a else autocast_enabled("cpu")
    try:
        yield
    finally:
        llama.apply_rotary_pos_emb, torch.nn.functional.dropout = rope, dropout
        bnb_f.dequantize_4bit, torch.is_autocast_enabled = dequantize, autocast_enabled
