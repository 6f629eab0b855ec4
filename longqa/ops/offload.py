"""Activation offloading: checkpointed layers keep their saved inputs in pinned CPU memory.

Usage::

    from longqa.ops.offload import ActivationOffloader
    model.activation_checkpointing_enable()         # first: it (re)sets the checkpoint function
    off = ActivationOffloader()
    n = off.install(model)                          # wraps each checkpointed layer
    loss = model(**batch).loss; loss.backward()     # layer inputs live on the host in between
    off.uninstall(model)                            # exactly the previous functions again

With gradient checkpointing only each decoder layer's input (``[B, S, H]`` hidden states) is kept
from forward to backward; at 128K tokens that is still ``layers x S x H x 2`` bytes (32 GiB for an
8B Llama). Every layer that has ``_gradient_checkpointing_func`` (transformers'
``GradientCheckpointingLayer``) gets that function wrapped in
:class:`torch.autograd.graph.saved_tensors_hooks`: the tensors the checkpoint saves are copied to
pinned host memory on a side CUDA stream during forward (the pack hook), and copied back on the side
stream when the backward recompute asks for them (the unpack hook), prefetching the previous layer's
input so the transfer overlaps the current layer's recompute. Inner saves of a non-reentrant
checkpoint use torch's own (innermost) hooks, so only checkpoint inputs travel.

transformers' own ``activation_checkpointing_enable(offload=True)`` copies on the compute stream;
this one overlaps the copies with compute on a side stream and prefetches during backward.

GPU only: on a CPU model :meth:`ActivationOffloader.install` wraps nothing and logs why.
``simulate=True`` runs the same hook logic with host-to-host copies, which is how it is tested
without a GPU. Reference: the same idea as ``torch.autograd.graph.save_on_cpu`` and Unsloth's
"offloaded gradient checkpointing", restricted to checkpoint inputs.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_ORIGINAL = "_longqa_offload_original"


@dataclass(eq=False)
class _Record:
    device: torch.device
    host: Tensor  # pinned copy
    copied: Any = None  # CUDA event: device-to-host copy finished
    back: Tensor | None = None  # device copy once fetched
    ready: Any = None  # CUDA event: host-to-device copy finished
    prev: Any = None  # weakref to the record packed just before (prefetch target)


@dataclass
class OffloadStats:
    packed: int = 0
    packed_bytes: int = 0
    reused: int = 0
    unpacked: int = 0
    prefetched: int = 0
    kept: int = 0  # tensors left where they were (small, parameters, not on the device)
    layers: list[str] = field(default_factory=list)


class ActivationOffloader:
    """Pack/unpack hooks that move checkpoint inputs to pinned host memory and back."""

    def __init__(
        self, *, min_bytes: int = 1 << 20, prefetch: bool = True, simulate: bool = False
    ) -> None:
        self.min_bytes = min_bytes
        self.prefetch = prefetch
        self.simulate = simulate
        self.stats = OffloadStats()
        self._seen: dict[int, tuple[weakref.ref, _Record]] = {}
        self._last: _Record | None = None
        self._stream: Any = None

    # -- transfers (CUDA streams, or plain copies when simulating) ------------------------------
    def _side_stream(self, device: torch.device) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _to_host(self, t: Tensor, rec: _Record) -> None:
        if self.simulate:
            rec.host = t.detach().clone()
            return
        stream = self._side_stream(t.device)
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(t.device))  # t is fully computed
        with torch.cuda.stream(stream):
            host.copy_(t, non_blocking=True)
            rec.copied = stream.record_event()
        t.record_stream(stream)  # the allocator must not reuse t before the copy has read it
        rec.host = host

    def _fetch(self, rec: _Record) -> None:
        if rec.back is not None:
            return
        if self.simulate:
            rec.back = rec.host.clone()
            return
        stream = self._side_stream(rec.device)
        with torch.cuda.stream(stream):
            stream.wait_event(rec.copied)
            back = torch.empty(rec.host.shape, dtype=rec.host.dtype, device=rec.device)
            back.copy_(rec.host, non_blocking=True)
            rec.ready = stream.record_event()
        rec.back = back

    def _use(self, rec: _Record) -> Tensor:
        back = rec.back
        assert back is not None
        if not self.simulate:
            current = torch.cuda.current_stream(rec.device)
            current.wait_event(rec.ready)
            back.record_stream(current)
        return back

    # -- hooks ----------------------------------------------------------------------------------
    def _eligible(self, t: Tensor) -> bool:
        if isinstance(t, nn.Parameter) or t.numel() * t.element_size() < self.min_bytes:
            return False
        return self.simulate or t.is_cuda

    def pack(self, t: Tensor) -> Any:
        """Saved-tensor pack hook: returns ``t`` itself or a host-side record."""
        if not self._eligible(t):
            self.stats.kept += 1
            return t
        seen = self._seen.get(id(t))
        if seen is not None and seen[0]() is t:  # same tensor saved by several layers
            self.stats.reused += 1
            return seen[1]
        rec = _Record(device=t.device, host=t)
        self._to_host(t, rec)
        rec.prev = weakref.ref(self._last) if self._last is not None else None
        self._last = rec
        self._seen = {k: v for k, v in self._seen.items() if v[0]() is not None}
        self._seen[id(t)] = (weakref.ref(t), rec)
        self.stats.packed += 1
        self.stats.packed_bytes += t.numel() * t.element_size()
        return rec

    def unpack(self, packed: Any) -> Tensor:
        """Saved-tensor unpack hook: the device tensor again (fetched now or by a prefetch)."""
        if isinstance(packed, Tensor):
            return packed
        rec: _Record = packed
        self._fetch(rec)
        self.stats.unpacked += 1
        if self.prefetch and rec.prev is not None:
            prev = rec.prev()
            if prev is not None and prev.back is None:
                self._fetch(prev)  # backward visits layers in reverse: start the next transfer
                self.stats.prefetched += 1
        return self._use(rec)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a checkpoint function) run under this offloader's saved-tensor hooks."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                return fn(*args, **kwargs)

        setattr(run, _ORIGINAL, fn)
        return run

    # -- model integration ------------------------------------------------------------------------
    def install(self, model: nn.Module) -> int:
        """Wrap every checkpointed layer of ``model``; returns how many were wrapped."""
        device = _model_device(model)
        if device.type != "cuda" and not self.simulate:
            log.info("activation offloading skipped: needs CUDA (model is on %s)", device.type)
            return 0
        count = 0
        for name, module in model.named_modules():
            fn = module.__dict__.get("_gradient_checkpointing_func")
            if fn is None or not getattr(module, "gradient_checkpointing", False):
                continue
            if not hasattr(type(module), "_can_checkpoint_with_cache"):
                continue  # only layers that checkpoint themselves (GradientCheckpointingLayer)
            if hasattr(fn, _ORIGINAL):
                continue  # already wrapped
            module._gradient_checkpointing_func = self.wrap(fn)
            self.stats.layers.append(name)
            count += 1
        if count == 0:
            log.info("activation offloading skipped: no gradient-checkpointed layers")
        else:
            log.info("activation offloading on for %d checkpointed layers", count)
        return count

    @staticmethod
    def uninstall(model: nn.Module) -> int:
        """Restore the checkpoint functions :meth:`install` wrapped; returns how many."""
        count = 0
        for module in model.modules():
            fn = module.__dict__.get("_gradient_checkpointing_func")
            if fn is not None and hasattr(fn, _ORIGINAL):
                module._gradient_checkpointing_func = getattr(fn, _ORIGINAL)
                count += 1
        return count


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
