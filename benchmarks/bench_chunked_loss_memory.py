"""Peak CPU memory of one QLoRA training step, chunked cross-entropy vs full-vocabulary logits.

Usage::

    .venv/bin/python benchmarks/bench_chunked_loss_memory.py [--tokens 8192] [--chunk 1024]

Each mode runs in its own subprocess (so one cannot inherit the other's peak): the SmolLM2-135M
model of the ``smollm2-135m-yarn16k`` recipe (vocab 49,152) in 4-bit NF4 + LoRA with gradient
checkpointing, one forward+backward over ``--tokens`` tokens, loss chunk as in the recipe (1024). The peak resident set size of the step
is read from ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` once the model is
loaded (Linux), so model loading does not count. Both runs use the trainer's CPU setting of a
fixed glibc mmap threshold (``runtime_for`` on CPU), without which freed activations stay resident
and RSS reflects the allocator rather than the live tensors. Results go to
``benchmarks/results/chunked_loss_memory.{json,md}``; the goal is a ratio chunked/full ≤ 0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(mode: str, tokens: int, chunk: int) -> dict:
    import gc

    import torch

    from longqa.config.recipe import load_recipe
    from longqa.ops.causal_lm import causal_lm_loss
    from longqa.train.model import build_trainable_model, runtime_for

    recipe = load_recipe(
        "smollm2-135m-yarn16k",
        overrides=[f"train.max_length={tokens}", "train.gradient_checkpointing=true"],
    )
    model, _ = build_trainable_model(recipe, runtime_for(recipe, "cpu"))
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone()}
    gc.collect()
    baseline = _vm_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
    start = time.perf_counter()
    total, n = causal_lm_loss(model, batch, chunk_size=chunk, chunked=(mode == "chunked"))
    (total / n).backward()
    seconds = time.perf_counter() - start
    peak = _vm_kb("VmHWM")
    return {
        "mode": mode,
        "tokens": tokens,
        "vocab": vocab,
        "chunk": chunk if mode == "chunked" else None,
        "loss": float(total / n),
        "baseline_rss_gb": baseline / 2**20,
        "step_peak_rss_gb": peak / 2**20,
        "step_extra_gb": (peak - baseline) / 2**20,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--worker", choices=["chunked", "full"])
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.tokens, args.chunk)), flush=True)
        return
    rows = {}
    for mode in ("chunked", "full"):
        cmd = [sys.executable, __file__, "--worker", mode, "--tokens", str(args.tokens)]
        proc = subprocess.run([*cmd, "--chunk", str(args.chunk)], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-2000:]}")
        rows[mode] = json.loads(lines[-1][7:])
        print(json.dumps(rows[mode]), flush=True)
    c, f = rows["chunked"], rows["full"]
    summary = {
        "command": f"benchmarks/bench_chunked_loss_memory.py --tokens {args.tokens} "
        f"--chunk {args.chunk}",
        "machine": f"{platform.machine()} CPU, {platform.system()}, python {platform.python_version()}",
        "peak_ratio": c["step_peak_rss_gb"] / f["step_peak_rss_gb"],
        "extra_ratio": c["step_extra_gb"] / f["step_extra_gb"],
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chunked_loss_memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = [
        "# Chunked cross-entropy vs full logits: peak RSS of one training step",
        "",
        f"`{summary['command']}` on {summary['machine']}; SmolLM2-135M (vocab {c['vocab']:,}), "
        f"4-bit NF4 + LoRA, gradient checkpointing, {args.tokens:,} tokens, one forward+backward.",
        "",
        "| mode | step peak RSS (GB) | above model baseline (GB) | loss | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in (c, f):
        md.append(
            f"| {r['mode']} | {r['step_peak_rss_gb']:.2f} | {r['step_extra_gb']:.2f} | "
            f"{r['loss']:.4f} | {r['seconds']:.0f} |"
        )
    md += [
        "",
        f"Peak ratio chunked/full: **{summary['peak_ratio']:.2f}** (goal ≤ 0.5); "
        f"ratio of the memory the step adds above the loaded model: {summary['extra_ratio']:.2f}.",
        "",
    ]
    (RESULTS / "chunked_loss_memory.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
