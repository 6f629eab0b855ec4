"""CPU cost of returning freed memory to the OS: glibc's default vs the trainer's fixed mmap threshold.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_cpu_alloc.py [--mb 12.6] [--repeat 400]

On CPU, ``longqa.train.model.runtime_for`` fixes glibc's mmap threshold at 128 KiB
(``memory.cpu_return_freed``, on by default) so that activations freed during a step go back to
the OS. Every large tensor then lives in a fresh mapping whose pages the kernel faults in and
zeroes. This measures that price in isolation: allocate-and-write a tensor of ``--mb`` MB (default:
one ``[2048, 1536]`` fp32 MLP intermediate of SmolLM2 at 2K tokens) and free it, ``--repeat``
times, one thread, each setting in its own process, alternating twice; it reports process CPU
seconds per GB allocated and the ratio. Results: ``benchmarks/results/cpu_alloc.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(mode: str, mb: float, repeat: int) -> float:
    import torch

    torch.set_num_threads(1)
    if mode == "fixed":
        from longqa.train.cpu_memory import release_freed_memory_on_cpu

        assert release_freed_memory_on_cpu()
    n = int(mb * 1e6 / 4)
    x = torch.randn(n)
    start = time.process_time()
    for _ in range(repeat):
        y = x * 2.0  # allocate + write one fresh tensor
        del y
    return (time.process_time() - start) / (repeat * n * 4 / 1e9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=12.6)
    p.add_argument("--repeat", type=int, default=400)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.mb, a.repeat)))
        return 0
    runs: dict[str, list[float]] = {"default": [], "fixed": []}
    for _ in range(2):
        for mode in runs:
            cmd = [sys.executable, __file__, "--worker", mode, "--mb", str(a.mb),
                   "--repeat", str(a.repeat)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    d, f = min(runs["default"]), min(runs["fixed"])
    args = "".join(" " + x for x in (sys.argv[1:] if argv is None else argv))
    text = (
        f"## CPU seconds per GB of fresh tensors ({a.mb} MB each, {a.repeat}×, 1 thread)\n\n"
        f"Command: `python benchmarks/bench_cpu_alloc.py{args}`" + "\n\n"
        "| glibc setting | CPU s / GB (best of 2) | runs |\n|---|---|---|\n"
        f"| default (dynamic mmap threshold: freed blocks reused) | {d:.3f} | "
        f"{', '.join(f'{x:.3f}' for x in runs['default'])} |\n"
        f"| fixed 128 KiB threshold (`memory.cpu_return_freed`) | {f:.3f} | "
        f"{', '.join(f'{x:.3f}' for x in runs['fixed'])} |\n\n"
        f"Returning freed memory to the OS costs {f - d:.2f} CPU s per GB allocated "
        f"({f / d:.1f}× the default).\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_alloc.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
