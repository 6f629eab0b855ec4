"""Python stages of ``benchmarks/gpu_check.sh`` (one GPU, one call, every stage time-boxed).

Usage::

    python benchmarks/gpu_check.py env|kernels|train|longest|report --out DIR [--dry-run]
    python benchmarks/gpu_check.py all --dry-run --out /tmp/gc      # every stage, CPU, tiny shapes

* ``env``: device name, driver/CUDA, package versions (``env.md``).
* ``kernels``: fused RoPE forward + backward vs transformers' eager ``apply_rotary_pos_emb`` and vs
  Liger-Kernel's RoPE, with effective GB/s against a measured device-to-device copy; the LM-head
  loss (plain logits + ``F.cross_entropy``) vs longqa's chunked linear cross-entropy vs Liger's
  fused linear cross-entropy: time and peak memory (``kernels.md``).
* ``train`` / ``longest``: see ``gpu_train.py`` (``train.md``, ``train.jsonl``) and
  ``gpu_longest.py`` (``longest.md``).
* ``report``: joins what the stages left into ``gpu_check.md`` (a stage that died leaves a line).

``--dry-run`` runs the same code on CPU with tiny shapes, Triton kernels in the interpreter
(``TRITON_INTERPRET=1``), float32, no 4-bit and simulated offloading; its numbers are not
measurements. Without CUDA and without ``--dry-run`` a stage exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("env", "kernels", "train", "longest")
PACKAGES = ("torch", "triton", "transformers", "peft", "bitsandbytes", "accelerate",
            "liger-kernel", "flash-attn", "pydantic")  # fmt: skip


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def stage_env(env: Any, out: Path) -> None:
    import torch

    if env.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        device = f"CPU only ({platform.processor() or platform.machine()}): dry run"
    rows = [["device", device], ["python", platform.python_version()]]
    rows += [[p, _version(p)] for p in PACKAGES]
    from gpu_train import table

    (out / "env.md").write_text(f"### Environment\n\n{table(['what', 'version'], rows)}\n")


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _timed(env: Any, fn: Any, repeat: int) -> float:
    """Median synchronised time of ``fn`` after one warm-up call (bench_kernels' timer)."""
    from bench_kernels import timed

    return timed(env, fn, repeat=repeat, warmup=1)


def bench_rope(env: Any, seq: int, n_q: int, n_kv: int, head_dim: int) -> str:
    import torch
    from gpu_train import liger_available, table
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from longqa.ops.rope_triton import fused_rope

    dev, reps = env.device, (1 if env.dry_run else 20)
    dtype = torch.float32 if env.dry_run else torch.bfloat16
    q = torch.randn(1, seq, n_q, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    k = torch.randn(1, seq, n_kv, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    q.requires_grad_(True)
    k.requires_grad_(True)
    inv = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=dev).float() / head_dim))
    emb = torch.arange(seq, device=dev).float()[:, None] * inv
    emb = torch.cat([emb, emb], dim=-1)[None]  # [1, S, D]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    gq, gk = torch.randn_like(q), torch.randn_like(k)

    def run(rotate: Any) -> Any:
        def fn() -> None:
            q_in, k_in = q * 1, k * 1  # non-leaf, like projection outputs (fused rotates in place)
            qo, ko = rotate(q_in, k_in, cos, sin)
            torch.autograd.grad([qo, ko], [q, k], [gq, gk])

        return fn

    ways = {"transformers eager": apply_rotary_pos_emb, "longqa fused (Triton)": fused_rope}
    if liger_available():
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        ways["Liger-Kernel"] = liger_rotary_pos_emb
    skip = (
        "" if "Liger-Kernel" in ways else "\n\nLiger-Kernel not importable here: its row skipped."
    )
    base = _timed(
        env, run(lambda q, k, c, s: (q, k)), reps
    )  # the q*1, k*1 copies and grad plumbing
    qk_bytes = (q.numel() + k.numel()) * q.element_size()
    traffic = 2 * (2 * qk_bytes + 2 * seq * head_dim * cos.element_size())  # fwd + bwd rotations
    src = torch.empty(max(1 << 20, 64 * qk_bytes // q.element_size()), device=dev, dtype=dtype)
    dst = torch.empty_like(src)
    t_copy = _timed(env, lambda: dst.copy_(src), reps)
    copy_bw = 2 * src.numel() * src.element_size() / t_copy
    rows, t_eager = [], None
    for what, rotate in ways.items():
        t = max(_timed(env, run(rotate), reps) - base, 1e-9)
        t_eager = t_eager or t
        bw = traffic / t
        rows.append([what, f"{t * 1e3:.3f}", f"{t_eager / t:.2f}", f"{bw / 1e9:.1f}",
                     f"{bw / copy_bw:.2f}"])  # fmt: skip
    rows.append(["device copy", f"{t_copy * 1e3:.3f}", "", f"{copy_bw / 1e9:.1f}", "1.00"])
    title = f"RoPE fwd+bwd (1, {seq:,} tokens, {n_q}/{n_kv} heads, {head_dim}), {_name(dtype)}"
    head = ["kernel", "ms", "speed-up vs eager", "effective GB/s", "fraction of copy"]
    title += " (dry run: not measurements)" if env.dry_run else ""
    return f"### {title}\n\n{table(head, rows)}{skip}\n"


def bench_ce(env: Any, tokens: int, hidden: int, vocab: int) -> str:
    import torch
    import torch.nn.functional as F
    from gpu_train import liger_available, table

    from longqa.ops.causal_lm import loss_chunk_from_memory
    from longqa.ops.chunked_ce import chunked_linear_cross_entropy

    dev, reps = env.device, (1 if env.dry_run else 5)
    dtype = torch.float32 if env.dry_run else torch.bfloat16
    h = torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=dev, dtype=dtype) / hidden**0.5).requires_grad_(True)
    y = torch.randint(0, vocab, (tokens,), device=dev)
    chunk = min(loss_chunk_from_memory(vocab), tokens)

    def plain() -> Any:
        return F.cross_entropy(F.linear(h, w).float(), y)

    ways = {
        "plain logits + F.cross_entropy": plain,
        f"longqa chunked ({chunk} tokens)": lambda: chunked_linear_cross_entropy(
            h, w, y, chunk_size=chunk
        ),
    }
    if liger_available():
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        ways["Liger fused linear CE"] = lambda: liger(w, h, y)
    skip = "" if len(ways) == 3 else "\n\nLiger-Kernel not importable here: its row skipped."
    rows, t_plain, ref = [], None, None
    for what, fn in ways.items():

        def run(fn: Any = fn) -> Any:
            loss = fn()
            torch.autograd.grad(loss, [h, w])
            return loss

        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            t = _timed(env, run, reps)
        except torch.OutOfMemoryError:
            rows.append([what, "OOM", "", "", ""])
            continue
        value = float(fn().detach())
        ref = ref if ref is not None else value
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
        t_plain = t_plain or t
        rows.append([what, f"{t * 1e3:.2f}", f"{t_plain / t:.2f}", f"{peak:.2f}",
                     f"{abs(value - ref):.1e}"])  # fmt: skip
    title = f"LM-head loss fwd+bwd ({tokens:,} tokens, hidden {hidden}, vocab {vocab:,}), {_name(dtype)}"
    head = ["loss", "ms", "speed-up vs plain", "peak GiB", "|loss - plain|"]
    title += " (dry run: not measurements)" if env.dry_run else ""
    return f"### {title}\n\n{table(head, rows)}{skip}\n"


def stage_kernels(env: Any, out: Path) -> None:
    rope = (16, 4, 2, 32) if env.dry_run else (32768, 32, 8, 128)
    ce = (64, 32, 100) if env.dry_run else (16384, 4096, 128256)
    path = out / "kernels.md"
    path.write_text(bench_rope(env, *rope) + "\n")
    path.write_text(path.read_text() + bench_ce(env, *ce))


def stage_report(out: Path, log_names: list[str]) -> str:
    parts = ["## gpu_check: longqa on one GPU"]
    for stage in STAGES:
        md = out / f"{stage}.md"
        parts.append(md.read_text().strip() if md.exists() else f"### {stage}\n\n(no output)")
    status = out / "stages.tsv"
    if status.exists():
        rows = [ln.split("\t") for ln in status.read_text().splitlines() if ln.strip()]
        from gpu_train import table

        parts.append("### Stages\n\n" + table(["stage", "exit status", "seconds", "box"], rows))
    text = "\n\n".join(parts) + "\n"
    (out / "gpu_check.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=[*STAGES, "report", "all"])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/gpu")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget", type=float, default=240.0, help="seconds for train/longest")
    p.add_argument("--models", default="llama3-8b,qwen-14b")
    p.add_argument("--lengths", default="16384,32768,65536")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.stage == "report":
        print(stage_report(out, []))
        return 0
    if a.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from gpu_longest import run_longest_stage
    from gpu_train import VARIANTS, Env, run_train_stage

    if not a.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check needs a CUDA GPU (none found); --dry-run checks it on CPU", file=sys.stderr
        )
        return 2
    env = Env("cpu" if a.dry_run else "cuda", a.dry_run)
    models = ["tiny"] if a.dry_run else [m for m in a.models.split(",") if m]
    lengths = [16, 32] if a.dry_run else [int(x) for x in a.lengths.split(",") if x]
    # Liger patches transformers' classes for good: in one process, the train stage goes last
    stages = ("env", "kernels", "longest", "train") if a.stage == "all" else (a.stage,)
    for stage in stages:
        print(f"== {stage}", flush=True)
        if not a.dry_run:  # each stage's own time box; the dry run's wall time is not a measure
            env.deadline = time.monotonic() + a.budget
        if stage == "env":
            stage_env(env, out)
        elif stage == "kernels":
            stage_kernels(env, out)
        elif stage == "train":
            run_train_stage(env, out, models, lengths, list(VARIANTS))
        elif stage == "longest":
            start, res, cap = (16, 16, 64) if a.dry_run else (lengths[0], 8192, 1 << 20)
            run_longest_stage(
                env,
                out,
                models,
                ["longqa all + bf16 residual", "longqa all", "transformers+peft"],
                start,
                res,
                cap,
            )
    if a.stage == "all":
        print(stage_report(out, []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
