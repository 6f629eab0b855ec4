"""CPU cost of returning freed memory to the OS: glibc's default vs the trainer's fixed mmap threshold.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_cpu_alloc.py [--mb 12.6] [--repeat 400]

On CPU, ``longqa.train.model.runtime_for`` fixes glibc's mmap threshold at 128 KiB
(``memory.cpu_return_freed``, on by default) so that activations freed during a step go back to
the OS. Every large tensor then lives in a fresh mapping whose pages the kernel faults in and
zeroes, 4 KiB at a time unless the process started with glibc's huge-pages tunable (which
``longqa train`` arranges, ``longqa.train.cpu_memory``). This measures that price in isolation:
allocate-and-write a tensor of ``--mb`` MB (default: one ``[2048, 1536]`` fp32 MLP intermediate of
SmolLM2 at 2K tokens) and free it, ``--repeat`` times, one thread, each setting in its own process,
alternating twice; it reports process CPU seconds per GB allocated and the ratios. Results:
``benchmarks/results/cpu_alloc.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(mode: str, mb: float, repeat: int) -> float:
    import torch

    torch.set_num_threads(1)
    if mode in ("fixed", "fixed + huge pages"):
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
    from longqa.train.cpu_memory import HUGE_PAGES_TUNABLE, huge_pages_supported, with_huge_pages

    labels = {
        "default": "default (dynamic mmap threshold: freed blocks reused)",
        "fixed": "fixed 128 KiB threshold (`memory.cpu_return_freed`), 4 KiB pages",
        "fixed + huge pages": f"the same, started with `GLIBC_TUNABLES={HUGE_PAGES_TUNABLE}` "
        "(what `longqa train` does on CPU)",
    }
    if not huge_pages_supported():
        del labels["fixed + huge pages"]
    plain_env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    runs: dict[str, list[float]] = {m: [] for m in labels}
    for _ in range(2):
        for mode in runs:
            cmd = [sys.executable, __file__, "--worker", mode, "--mb", str(a.mb),
                   "--repeat", str(a.repeat)]  # fmt: skip
            env = with_huge_pages(plain_env) if "huge" in mode else plain_env
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    best = {m: min(v) for m, v in runs.items()}
    args = "".join(" " + x for x in (sys.argv[1:] if argv is None else argv))
    lines = [
        f"## CPU seconds per GB of fresh tensors ({a.mb} MB each, {a.repeat}×, 1 thread)",
        "",
        f"Command: `python benchmarks/bench_cpu_alloc.py{args}`",
        "",
        "| glibc setting | CPU s / GB (best of 2) | runs |",
        "|---|---|---|",
    ]
    lines += [
        f"| {labels[m]} | {best[m]:.3f} | {', '.join(f'{x:.3f}' for x in runs[m])} |" for m in runs
    ]
    d, f = best["default"], best["fixed"]
    lines += ["", f"Returning freed memory to the OS with 4 KiB pages costs {f - d:.2f} CPU s per GB "
              f"allocated ({f / d:.1f}× the default)"]  # fmt: skip
    if "fixed + huge pages" in best:
        h = best["fixed + huge pages"]
        lines[-1] += f"; with 2 MiB pages {h - d:+.2f} CPU s per GB ({h / d:.1f}× the default)"
    text = "\n".join(lines) + ".\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_alloc.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
