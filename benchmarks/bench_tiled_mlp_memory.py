"""Peak CPU memory of one SmolLM2 training step with and without the sequence-tiled MLP.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_tiled_mlp_memory.py [--tokens 8192] [--tile 0]

Each mode runs in its own subprocess: the ``smollm2-135m-yarn16k`` recipe's model (SmolLM2-135M,
hidden 576, intermediate 1536, 30 layers) built by :func:`longqa.train.model.build_trainable_model`
in float32 without 4-bit (the MLP's intermediates do not depend on the weight format; loading
skips the CPU quantisation), LoRA r=16 on all linear layers + norms, gradient checkpointing, the
chunked loss, one forward + backward over ``--tokens`` tokens of random ids. ``tiled`` sets
``kernels.tiled_mlp=true`` (tile 0 = the hidden size, 576 tokens). The step's peak RSS is
``VmHWM`` reset through ``/proc/self/clear_refs`` after the model is built (Linux); the loss and
LoRA gradients of both modes are compared (they must agree). Results go to
``benchmarks/results/tiled_mlp_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("decoder forward", "loss forward", "loss backward", "layers backward")


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PhaseSampler:
    """Peak RSS per phase of the step: a thread reads ``VmRSS`` every millisecond and files it
    under the phase set last: ``decoder forward``, ``loss forward`` (after the final norm),
    ``loss backward``, then ``layers backward`` from the first MLP recomputed by checkpointing
    (a layer's own hooks do not run again in the recompute; its MLP's do)."""

    def __init__(self) -> None:
        import threading

        self.phase = "idle"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = _vm_kb("VmRSS")
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), kb)
            self._stop.wait(0.001)

    def __enter__(self) -> PhaseSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mlp_hook(self, *_: object) -> None:
        if self.phase == "loss backward":
            self.phase = "layers backward"

    def norm_hook(self, *_: object) -> None:
        if self.phase == "decoder forward":
            self.phase = "loss forward"


def worker(mode: str, tokens: int, tile: int, loss_chunk: int, warmup: bool) -> dict:
    import gc

    import torch

    from longqa.config.recipe import load_recipe
    from longqa.ops.causal_lm import causal_lm_loss
    from longqa.train.model import build_trainable_model, runtime_for

    overrides = [f"train.max_length={tokens}", "model.quantization=none", "model.dtype=float32",
                 "lora.dropout=0.0", f"kernels.tiled_mlp={'true' if mode == 'tiled' else 'false'}",
                 f"kernels.tiled_mlp_tile={tile}"]  # fmt: skip
    if loss_chunk >= 0:
        overrides.append(f"train.loss_chunk_size={loss_chunk}")
    recipe = load_recipe("smollm2-135m-yarn16k", overrides=overrides)
    torch.manual_seed(0)
    model, notes = build_trainable_model(recipe, runtime_for(recipe, "cpu"))
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone()}
    if warmup:  # one step first: one-off allocations (thread pools, caches) out of the peak
        total, n = causal_lm_loss(model, batch, chunk_size=recipe.train.loss_chunk_size)
        (total / n).backward()
        model.zero_grad(set_to_none=True)
        del total, n
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    base = _vm_kb("VmRSS")
    start = time.perf_counter()
    with PhaseSampler() as sampler:
        decoder = model.get_base_model().model
        for layer in decoder.layers:
            layer.mlp.register_forward_pre_hook(sampler.mlp_hook)
        decoder.norm.register_forward_hook(sampler.norm_hook)
        sampler.phase = "decoder forward"
        total, n = causal_lm_loss(model, batch, chunk_size=recipe.train.loss_chunk_size)
        sampler.phase = "loss backward"
        (total / n).backward()
    seconds = time.perf_counter() - start
    grads = [
        p.grad.double().norm().item() for n_, p in model.named_parameters() if p.grad is not None
    ]
    return {
        "mode": mode, "tokens": tokens, "notes": [x for x in notes if "tiled" in x],
        "peak_rss_gb": _vm_kb("VmHWM") / 2**20, "rss_before_gb": base / 2**20,
        "step_peak_over_before_gb": (_vm_kb("VmHWM") - base) / 2**20, "seconds": seconds,
        "loss": float(total / n), "grad_norm_sum": sum(grads),
        "loss_chunk": recipe.train.loss_chunk_size,
        "phase_peak_over_before_gb": {k: (v - base) / 2**20 for k, v in sampler.peaks.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument(
        "--loss-chunk",
        type=int,
        default=-1,
        help="train.loss_chunk_size (tokens; 0 = from memory; -1 = the recipe's)",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="measure the first step (one-off allocations included)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.tokens, a.tile, a.loss_chunk, a.warmup)))
        return 0
    res = {}
    for mode in ("untiled", "tiled"):
        cmd = [sys.executable, __file__, "--worker", mode, "--tokens", str(a.tokens),
               "--tile", str(a.tile), "--loss-chunk", str(a.loss_chunk)]  # fmt: skip
        cmd += [] if a.warmup else ["--no-warmup"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        res[mode] = json.loads(lines[-1])
        print(json.dumps(res[mode]), file=sys.stderr, flush=True)
    u, t = res["untiled"], res["tiled"]
    command = "python benchmarks/bench_tiled_mlp_memory.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = "\n".join([
        f"## Tiled MLP: peak RSS of one SmolLM2-135M training step at {a.tokens:,} tokens (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        "float32, LoRA r16 all-linear + norms, gradient checkpointing, chunked loss; each mode in "
        "its own process, peak = VmHWM after the model is built.",
        "",
        "| mode | step peak RSS (GB) | of which above the loaded model (GB) | loss |",
        "|---|---|---|---|",
        f"| untiled | {u['peak_rss_gb']:.2f} | {u['step_peak_over_before_gb']:.2f} | {u['loss']:.6f} |",
        f"| tiled ({', '.join(t['notes'])}) | {t['peak_rss_gb']:.2f} | "
        f"{t['step_peak_over_before_gb']:.2f} | {t['loss']:.6f} |",
        "",
        "Peak above the loaded model per phase of the step (GB; the step's peak is the largest):",
        "",
        "| mode | " + " | ".join(PHASES) + " |",
        "|---|" + "---|" * len(PHASES),
        *(
            f"| {r['mode']} | "
            + " | ".join(f"{r['phase_peak_over_before_gb'].get(ph, 0.0):.2f}" for ph in PHASES)
            + " |"
            for r in (u, t)
        ),
        "",
        f"Ratio tiled / untiled: peak {t['peak_rss_gb'] / u['peak_rss_gb']:.2f}×, above the model "
        f"{t['step_peak_over_before_gb'] / u['step_peak_over_before_gb']:.2f}×; sum of LoRA/norm "
        f"gradient norms {u['grad_norm_sum']:.6g} vs {t['grad_norm_sum']:.6g}.",
        "",
    ])  # fmt: skip
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiled_mlp_memory.md").write_text(text)
    (RESULTS / "tiled_mlp_memory.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
