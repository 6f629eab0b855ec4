"""The no-dispatch-mode layer measurement: why it exists (a mode stops in-place gradient sums) and
its table."""

from __future__ import annotations

import torch
from bench_modules import bench_fixture

bench = bench_fixture("bench_layer_memory_nomode")


def _backward_adds(mode) -> list[str]:  # noqa: ANN001
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(256, requires_grad=True)
    a = x * 1
    loss = sum((a * torch.randn(256)).sum() for _ in range(3))  # a's gradient has three parts
    with profile(activities=[ProfilerActivity.CPU]) as prof, mode:
        loss.backward()
    return [e.name for e in prof.events() if e.name in ("aten::add", "aten::add_")]


def test_a_dispatch_mode_turns_in_place_gradient_sums_out_of_place(bench):
    import contextlib

    assert _backward_adds(contextlib.nullcontext()) == ["aten::add_", "aten::add_"]
    under_mode = _backward_adds(bench.CallThrough())  # (the profiler sees each op twice there)
    assert "aten::add" in under_mode and "aten::add_" not in under_mode


def test_table_lists_each_stream(bench):
    rows = {"fp32": {"no mode": 2150.4, "no-op mode": 2181.5, "tracker": 2105.9, "planned": 2144}}
    text = bench.markdown(rows, (2048, 4096), "python benchmarks/bench_layer_memory_nomode.py")
    assert "| fp32 | 2,150 | 2,182 | 2,106 | 2,144 |" in text
    assert "T 2,048 → 4,096" in text
