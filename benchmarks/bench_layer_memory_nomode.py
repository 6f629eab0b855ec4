"""A checkpointed layer's peak per token measured without a dispatch mode, beside the tracker's.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_layer_memory_nomode.py            # ~8 min, 2 cores
    .venv/bin/python benchmarks/bench_layer_memory_nomode.py --tokens 64 128 --modes fp32

``live_memory.LiveStorageTracker`` is a ``TorchDispatchMode``; under any dispatch mode PyTorch's
autograd engine sums a gradient's parts out of place, while a plain run (a GPU training step)
accumulates in place where it can. This script measures the same small layer as
``tests/test_plan_measured.py`` (hidden 64, intermediate 224, 4/2 heads, NF4, LoRA r16
dropout 0.1, trained norms, bf16 autocast, SDPA) with every memory switch on, three ways:

* **no mode**: the profiler's CPU allocation events (``profile_memory=True``), summed in time order;
  RoPE is the real fused kernel (``kernels.rope``) in the Triton interpreter, whose temporaries are
  numpy's, not torch's; the layer output is subtracted (the next layer's stored input, which the
  tracker leaves out too);
* **no-op mode**: the same, inside a dispatch mode that only calls through;
* **tracker**: ``bench_layer_memory.measure`` (the planner's measurements).

Per-token slopes between the two lengths, beside the planner's larger attention peak. Writes
``results/layer_memory_nomode.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TRITON_INTERPRET", "1")  # the fused RoPE kernel runs on CPU

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layer_memory as bench  # noqa: E402
from live_memory import LiveStorageTracker, gpu_like  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIMS = {"hidden": 64, "inter": 224, "heads": 4, "kv_heads": 2}
SHAPE_ARGS = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 224, "vocab": 256}
MODES = {  # name -> recipe overrides (every memory switch on; the stream's dtype differs)
    "fp32": ["kernels.lean_lora_dropout=true", "kernels.tiled_mlp_norm=true"],
    "bf16": ["kernels.lean_lora_dropout=true", "kernels.tiled_mlp_norm=true",
             "memory.bf16_residual=true"],
}  # fmt: skip


class CallThrough(TorchDispatchMode):
    """A dispatch mode that changes nothing but its own presence."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return func(*args, **(kwargs or {}))


def build(name: str) -> tuple[Any, Any]:
    """The small layer with every switch of ``MODES[name]`` applied, and its recipe."""
    import longqa.ops.lora_dropout as lora_dropout
    import longqa.ops.rmsnorm as rmsnorm
    from longqa.config.recipe import KernelsConfig, MemoryConfig, load_recipe
    from longqa.patch.kernels import apply_kernels
    from longqa.patch.lora_dropout import apply_lean_lora_dropout
    from longqa.patch.residual import apply_bf16_residual
    from longqa.patch.rmsnorm import apply_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp

    lora_dropout.CHUNK = rmsnorm.BACKWARD_CHUNK = 64  # pieces as at long lengths
    plain = load_recipe(
        "llama3-8b-abf128k", ["kernels.tiled_mlp=false", "kernels.lean_rmsnorm=false"]
    )
    model = bench.build_layer_model(plain, DIMS)
    if "memory.bf16_residual=true" in MODES[name]:
        apply_bf16_residual(model, torch.bfloat16)
    else:
        apply_lean_rmsnorm(model)
    apply_lean_lora_dropout(model)
    apply_tiled_mlp(model, 32, with_norm=True)
    kernels = KernelsConfig(rope=True, chunked_ce=False)
    apply_kernels(model.get_base_model(), kernels, MemoryConfig(), force_triton=True)
    return model, load_recipe("llama3-8b-abf128k", MODES[name])


def profiled_peak(model: Any, tokens: int, *, mode: bool) -> int:
    """Peak bytes allocated by torch over the layer's forward + backward, minus its output."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    x = bench.layer_input(model, tokens, g)
    outer = CallThrough() if mode else contextlib.nullcontext()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with gpu_like(LiveStorageTracker(), fused_rope=False), prof, outer:
        y = bench.layer_forward(model, x)
        y.backward(torch.randn(y.shape, generator=g, dtype=y.dtype))
        output = y.untyped_storage().nbytes()
        del y
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak - output


def _shape() -> Any:
    from longqa.plan.terms import ModelShape

    return ModelShape(**SHAPE_ARGS)


def slopes(name: str, tokens: tuple[int, int]) -> dict[str, float]:
    from longqa.plan.terms import attention_backward_bytes_per_token, forward_bytes_per_token

    model, recipe = build(name)
    d = tokens[1] - tokens[0]
    out = {}
    for label, mode in (("no mode", False), ("no-op mode", True)):
        a, b = (profiled_peak(model, t, mode=mode) for t in tokens)
        out[label] = (b - a) / d
    a, b = (bench.measure(model, t)["peak_bytes"] for t in tokens)  # RoPE: the tracker's stand-in
    out["tracker"] = (b - a) / d
    out["planned"] = max(
        sum(forward_bytes_per_token(recipe, _shape()).values()),
        sum(attention_backward_bytes_per_token(recipe, _shape()).values()),
    )
    return out


def markdown(rows: dict[str, dict[str, float]], tokens: tuple[int, int], command: str) -> str:
    lines = [
        "## One layer's peak without a dispatch mode (small layer, every memory switch)",
        "",
        f"Command: `{command}`",
        "",
        f"Per-token slope of the peak, T {tokens[0]:,} → {tokens[1]:,}, bytes per token "
        f"({torch.get_num_threads()} torch threads):",
        "",
        "| stream | no mode (profiler) | no-op mode (profiler) | tracker | planned |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['no mode']:,.0f} | {r['no-op mode']:,.0f} | {r['tracker']:,.0f} | "
            f"{r['planned']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs=2, default=[2048, 4096])
    p.add_argument("--modes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "layer_memory_nomode.md"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tokens = (a.tokens[0], a.tokens[1])
    rows = {name: slopes(name, tokens) for name in a.modes.split(",")}
    command = "python benchmarks/bench_layer_memory_nomode.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(rows, tokens, command.strip())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
