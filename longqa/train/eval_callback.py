"""Long-context probes while training: passkey / needle / RULER subsets on the model being trained.

The recipe's ``eval:`` section (:class:`~longqa.config.recipe.EvalConfig`) switches it on. Every
``every_steps`` optimizer steps and at the end of each phase, the callback puts the model in eval
mode (the RoPE patch applied for training stays in place, so the probe sees the training
positions), generates greedily without gradients, restores training mode, and appends one row to
``train_log.jsonl``::

    {"event": "eval", "phase": "sft", "step": 50, "passkey": {"4096": 1.0, "32768": 0.5},
     "ruler": {"4096": 92.5, "32768": 40.0}, "ruler_table": {...}, "effective_context": 4096}

It also prints the scores by length on the console. When the longest length's score of a probe
falls below ``collapse_ratio`` × its best so far, the row carries a ``warning`` and the console
says so. The effective context (from RULER when tasks are set, else passkey accuracy ×100) of the
last evaluation goes into the adapter bundle's ``longqa.json`` (see :meth:`bundle_info`).

Usage (the trainer wires this in)::

    cb = LongContextEvalCallback(recipe.eval, tokenizer, recipe.rope, out_dir, console=console)
    trainer.add_callback(cb); cb.phase = "sft"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from longqa.config.recipe import EvalConfig, RopeConfig
from longqa.core.errors import LongqaError


class LongContextEvalCallback(TrainerCallback):
    """Runs the recipe's long-context probes during training and logs them."""

    def __init__(
        self,
        cfg: EvalConfig,
        tokenizer: Any,
        rope: RopeConfig | None,
        out_dir: str | Path,
        *,
        phase: str = "train",
        console: Any = None,
        log_file: str = "train_log.jsonl",
    ) -> None:
        from longqa.eval.ruler.tasks import resolve_tasks

        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rope = rope if rope is not None and rope.method != "none" else None
        self.out_dir = Path(out_dir)
        self.log_path = self.out_dir / log_file
        self.phase = phase
        self.console = console
        self.ruler_tasks = resolve_tasks(cfg.ruler) if cfg.ruler else []
        self.haystack = cfg.haystack
        if self.haystack is None:
            from longqa.core.paths import shared_essays

            found = shared_essays()
            self.haystack = str(found) if found else None
        if cfg.needle and self.haystack is None:
            raise LongqaError(
                "recipe eval.needle: no haystack (set eval.haystack to a text folder)"
            )
        self.best: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self._last_step: tuple[str, int] | None = None

    # ------------------------------------------------------------------ hooks
    # probes run on rank 0 alone (the model is not wrapped for them; the other ranks wait at the
    # next collective of training)
    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        every = self.cfg.every_steps
        if every and state.global_step % every == 0 and state.is_world_process_zero:
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        if self.cfg.at_end and self._last_step != (self.phase, state.global_step):
            self.evaluate(model, state.global_step)

    # ------------------------------------------------------------------ the probe
    def evaluate(self, model: Any, step: int) -> dict[str, Any]:
        """Run every enabled probe on ``model`` now; return (and log) the row."""
        import torch

        from longqa.eval.runner import GreedyGenerator

        was_training = model.training
        model.eval()
        row: dict[str, Any] = {"event": "eval", "phase": self.phase, "step": step}
        started = time.perf_counter()
        where = self.out_dir / "eval" / f"{self.phase}-step{step}"
        try:
            with torch.no_grad():
                gen = GreedyGenerator(model, self.tokenizer, rope=self.rope)
                if self.cfg.passkey:
                    row["passkey"] = self._passkey(gen, where / "passkey")
                if self.cfg.needle:
                    row["needle"] = self._needle(gen, where / "needle")
                if self.ruler_tasks:
                    row["ruler"], row["ruler_table"] = self._ruler(model, where / "ruler")
        finally:
            if was_training:
                model.train()
        primary = row.get("ruler") or {k: 100 * v for k, v in (row.get("passkey") or {}).items()}
        if primary:
            from longqa.eval.ruler.scoring import effective_context

            row["effective_context"] = effective_context(primary, self.cfg.threshold)
        warnings = self._collapse(row)
        if warnings:
            row["warning"] = "; ".join(warnings)
        row["eval_s"] = round(time.perf_counter() - started, 1)
        row["time"] = round(time.time(), 3)
        self.history.append(row)
        self._last_step = (self.phase, step)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self._print(row)
        return row

    def _passkey(self, gen: Any, out: Path) -> dict[str, float]:
        from longqa.eval.passkey import make_trials, score_passkey, summarize
        from longqa.eval.runner import ResultStore, run_items

        items = make_trials(self.tokenizer, self.cfg.lengths, self.cfg.samples)
        store = ResultStore(out, {"task": "passkey"}, overwrite=True)
        run_items(
            items, gen, store, max_new_tokens=8,
            score=lambda it, text: {"correct": score_passkey(text, it["expected"])},
            description="passkey", show_progress=False,
        )  # fmt: skip
        return summarize(store.rows)["by_length"]

    def _needle(self, gen: Any, out: Path) -> dict[str, float]:
        from longqa.eval import needle as nd
        from longqa.eval.runner import ResultStore, run_items

        n = self.cfg.samples
        depths = [i / max(n - 1, 1) for i in range(n)]
        text = nd.load_haystack(self.haystack)
        items = nd.make_items(self.tokenizer, text, self.cfg.lengths, depths)
        store = ResultStore(out, {"task": "needle"}, overwrite=True)
        run_items(
            items, gen, store, max_new_tokens=48,
            score=lambda it, t: {"score": nd.containment_score(t, nd.ANSWER)},
            description="needle", show_progress=False,
        )  # fmt: skip
        return nd.summarize(store.rows, self.cfg.lengths, depths)["by_length"]

    def _ruler(self, model: Any, out: Path) -> tuple[dict[str, float], dict[str, Any]]:
        from longqa.eval.ruler import run_ruler

        summary = run_ruler(
            model, self.tokenizer, self.rope, lengths=self.cfg.lengths, tasks=self.ruler_tasks,
            samples=self.cfg.samples, haystack=self.haystack, threshold=self.cfg.threshold,
            max_new_tokens=self.cfg.max_new_tokens, out_dir=out, overwrite=True,
            show_progress=False,
        )  # fmt: skip
        return summary["by_length"], summary["table"]

    # ------------------------------------------------------------------ reporting
    def _collapse(self, row: dict[str, Any]) -> list[str]:
        """Warnings for probes whose longest-length score fell below ratio × its best so far."""
        out = []
        longest = str(max(self.cfg.lengths))
        for probe in ("passkey", "needle", "ruler"):
            score = (row.get(probe) or {}).get(longest)
            if score is None:
                continue
            best = self.best.get(probe, 0.0)
            if best > 0 and score < self.cfg.collapse_ratio * best:
                out.append(
                    f"{probe} at {longest} tokens collapsed: {score:.3g} (best so far {best:.3g})"
                )
            self.best[probe] = max(best, score)
        return out

    def _print(self, row: dict[str, Any]) -> None:
        if self.console is None:
            return
        parts = []
        for probe in ("passkey", "needle", "ruler"):
            if probe in row:
                vals = ", ".join(f"{k}: {v:.3g}" for k, v in row[probe].items())
                parts.append(f"{probe} {{{vals}}}")
        eff = row.get("effective_context")
        tail = f"  effective context {eff}" if eff is not None else ""
        self.console.print(
            f"[bold]{self.phase}[/] step {row['step']} eval: {'  '.join(parts)}{tail} "
            f"({row['eval_s']:.0f} s)",
            highlight=False,
        )
        if "warning" in row:
            self.console.print(f"[bold yellow]warning:[/] {row['warning']}", highlight=False)

    def bundle_info(self) -> dict[str, Any]:
        """``longqa.json`` fields for the adapter bundle: the last evaluation's figures."""
        if not self.history:
            return {}
        last = self.history[-1]
        keep = ("phase", "step", "passkey", "needle", "ruler", "effective_context", "warning")
        return {
            "effective_context": last.get("effective_context"),
            "eval": {k: last[k] for k in keep if k in last} | {"threshold": self.cfg.threshold},
        }
