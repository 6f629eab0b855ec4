"""Training logs: a rich console line and a JSONL row per logging step.

Usage (the trainer wires this in)::

    cb = MetricsCallback(log_path=out / "train_log.jsonl", phase="sft", console=console)
    trainer.add_callback(cb); cb.bind(trainer)

Each row: ``phase``, ``step``, ``max_steps``, ``loss`` (token-weighted mean over the optimizer step),
``lr``, ``grad_norm``, ``tokens_per_s`` (input tokens of all ranks, padding excluded, since the previous row),
``peak_mem_gb`` (CUDA peak allocated, or the process's peak RSS on CPU) and ``time``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from longqa.train.distributed import all_ranks_sum


def peak_memory_gb() -> float:
    """CUDA peak allocated memory if on GPU, else this process's peak resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class MetricsCallback(TrainerCallback):
    """Writes one JSONL row and one console line at every logging step."""

    def __init__(self, log_path: str | Path, phase: str, console: Any = None):
        self.log_path = Path(log_path)
        self.phase = phase
        self.console = console
        self.trainer: Any = None
        self._last_tokens = 0
        self._last_time = time.perf_counter()

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._last_time = time.perf_counter()
        self._last_tokens = all_ranks_sum(self.trainer.tokens_seen) if self.trainer else 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.perf_counter()
        # every rank reaches on_log at the same step: sum their tokens, then rank 0 writes
        tokens = all_ranks_sum(self.trainer.tokens_seen) if self.trainer is not None else 0
        if not state.is_world_process_zero:
            return
        rate = (tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
        self._last_tokens, self._last_time = tokens, now
        row = {
            "phase": self.phase,
            "step": state.global_step,
            "max_steps": state.max_steps,
            "loss": round(float(logs["loss"]), 6),
            "lr": float(logs.get("learning_rate", 0.0)),
            "grad_norm": _maybe_float(logs.get("grad_norm")),
            "tokens_per_s": round(rate, 1),
            "peak_mem_gb": round(peak_memory_gb(), 3),
            "time": round(time.time(), 3),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.console is not None:
            self.console.print(
                f"[bold]{self.phase}[/] step {row['step']}/{row['max_steps']}  "
                f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                f"{row['tokens_per_s']:.0f} tok/s  peak {row['peak_mem_gb']:.2f} GB",
                highlight=False,
            )


def _maybe_float(x: Any) -> float | None:
    try:
        return None if x is None else round(float(x), 6)
    except (TypeError, ValueError):
        return None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``train_log.jsonl``."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
