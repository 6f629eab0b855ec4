"""lm-evaluation-harness on the model exactly as longqa loads it: RoPE patch, dynamic methods, log-n.

Usage (what ``longqa eval harness`` does; needs the ``harness`` extra, ``pip install longqa[harness]``)::

    from longqa.eval.harness import run_harness
    from longqa.models.load import load
    model, tok, spec = load("smollm2-135m", adapter="runs/x/adapter")   # the adapter's RoPE spec
    summary = run_harness(model, tok, spec, tasks=["longqa_mdqa_choice"], include_path=["my_tasks/"],
                          out_dir="runs/h", limit=20)   # the shipped tasks are always on the path

The loaded instance goes into lm-eval's own ``HFLM`` (``pretrained=<model>``: no second load), then
``lm_eval.simple_evaluate`` runs each task. Prompts, few-shot, truncation (from the left) and
metrics are lm-eval's; only the model differs from ``lm_eval --model hf``: the rotary module longqa
trained with, including dynamic scales a Hugging Face config cannot express. One adjustment keeps a
dynamic method exact: HFLM right-pads log-likelihood batches without position ids, so a padded row
would take its scale from the batch's longest request; under a dynamic method log-likelihood
requests therefore run one per forward (each scale from its own length; generation batches stay
batched, their left padding comes with an attention mask).

Offline: the whole run sets ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``. Tasks whose YAML reads
local files (``dataset_path: json`` / ``parquet`` / ``csv`` with ``dataset_kwargs.data_files``) run
with no network; a task that needs a hub dataset not in the local cache fails in one line naming the
dataset and how to give a local copy. :data:`HARNESS_TASKS` holds YAMLs for longqa's own offline sets
(see ``docs/evaluation.md`` for producing their data files).

Files in ``out_dir`` (resumable per task: a rerun skips finished tasks, refuses other settings):
``run.json``; ``results.jsonl`` (one row per finished task: metric, value, stderr, n);
``harness/<task>.json`` (lm-eval's results of that task) and ``harness/samples_<task>.jsonl`` (its
per-sample log: arguments, responses, scores); ``lm_eval_results.json`` (lm-eval's results JSON of
all finished tasks merged) and ``summary.json`` (task → metric, value, stderr, n; RoPE spec; the
model's window), which ``longqa eval compare`` reads like any other run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, atomic_write_jsonl
from longqa.eval.lm_eval_tasks import (
    offline,
    prepare_tasks,
    quiet_lm_eval,
    require_lm_eval,
    with_shipped,
)
from longqa.ops.rope_scaling import is_dynamic

RESULTS_JSON = "lm_eval_results.json"


# ------------------------------------------------------------------------------------------ model
def harness_lm(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    batch_size: int = 1,
    max_length: int | None = None,
) -> Any:
    """lm-eval's ``HFLM`` around an already loaded (patched) model and its tokenizer."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    dynamic = spec is not None and is_dynamic(spec.method)

    class PatchedHFLM(HFLM):
        """HFLM; under a dynamic RoPE method log-likelihood rows run unpadded (one per forward)."""

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if not dynamic:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            saved, self.batch_size_per_gpu = self.batch_size_per_gpu, 1
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            finally:
                self.batch_size_per_gpu = saved

    with quiet_lm_eval():
        return PatchedHFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
        )


def model_window(model: Any, spec: RopeConfig | None) -> int | None:
    """Tokens the model + RoPE spec address (``None``: the method sets no limit)."""
    from longqa.patch.rope import addressable_length

    config = getattr(model, "config", None)
    if spec is None:
        return getattr(config, "max_position_embeddings", None)
    return addressable_length(config, spec)


def trained_quantization(adapter: str | Path | None, requested: str = "auto") -> str:
    """``requested`` (none / nf4), or for ``auto`` the adapter's training setting (its recipe's
    ``model.quantization``; ``none`` without an adapter)."""
    if requested not in ("auto", "none", "nf4"):
        raise LongqaError(f"--quantization must be auto, none or nf4 (got '{requested}')")
    if requested != "auto" or adapter is None:
        return "none" if requested == "auto" else requested
    import yaml

    from longqa.models.adapters import read_adapter_info

    recipe = yaml.safe_load(read_adapter_info(adapter).get("recipe") or "") or {}
    return str((recipe.get("model") or {}).get("quantization") or "none")


# ---------------------------------------------------------------------------------------- results
def headline(
    task_results: dict[str, Any], metrics: Sequence[str] = ()
) -> tuple[str, float | None, float | None]:
    """(metric, value, stderr) of one task's lm-eval results: the first of the task's ``metrics``
    (its ``higher_is_better`` keys) found, any filter (``acc,none`` → ``acc``; a filter other than
    ``none`` stays in the name)."""
    for metric in metrics:
        for key, value in task_results.items():
            name, _, filt = key.partition(",")
            if name != metric or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            stderr = task_results.get(f"{metric}_stderr,{filt}")
            label = metric if filt in ("", "none") else key
            return label, float(value), float(stderr) if isinstance(stderr, int | float) else None
    return "", None, None


def _jsonable(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """lm-eval results of several runs as one results JSON (per-task dicts merged)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def run_harness(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    tasks: Sequence[str],
    out_dir: str | Path,
    include_path: Sequence[str | Path] = (),
    limit: int | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    model_name: str = "",
    run_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    notify: Any = None,
    task_manager: Any = None,
) -> dict[str, Any]:
    """Run (or resume) lm-eval ``tasks`` on the loaded model; returns the summary.

    ``task_manager``: the one :func:`prepare_tasks` returned (checked before loading the model);
    made here when not given. ``run_info``: more settings recorded in ``run.json``."""
    from longqa.eval.runner import ResultStore

    lm_eval = require_lm_eval()
    if limit is not None and limit < 1:
        raise LongqaError("--limit must be >= 1")
    tm = task_manager if task_manager is not None else prepare_tasks(tasks, include_path)
    window = model_window(model, spec)
    config = {
        "task": "harness",
        "model": model_name,
        "rope": spec.model_dump() if spec else None,
        "include_path": [str(Path(p).resolve()) for p in with_shipped(include_path)],
        "limit": limit,
        "max_length": max_length,
        "lm_eval": lm_eval.__version__,
        **(run_info or {}),
    }
    store = ResultStore(out_dir, config, overwrite=overwrite)
    todo = [t for t in tasks if not store.done(t)]
    folder = store.dir / "harness"
    folder.mkdir(exist_ok=True)
    lm = (
        harness_lm(model, tokenizer, spec, batch_size=batch_size, max_length=max_length)
        if todo
        else None
    )
    for name in todo:
        if notify:
            notify(f"{name}: running")
        with offline(), quiet_lm_eval():
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[name], task_manager=tm, limit=limit, log_samples=True,
                bootstrap_iters=1000,
            )  # fmt: skip
        samples = out.pop("samples", {}) or {}
        out = _jsonable(out)
        for task, rows in samples.items():
            atomic_write_jsonl(folder / f"samples_{task}.jsonl", _jsonable(rows))
        atomic_write_json(folder / f"{name}.json", out)
        results = out.get("results", {})
        key = name if name in results else next(iter(results), name)
        metrics = list((out.get("higher_is_better") or {}).get(key) or {})
        metric, value, stderr = headline(results.get(key, {}), metrics)
        n = out.get("n-samples", {}).get(name, {}).get("effective")
        if n is None:
            n = sum(v.get("effective", 0) for v in out.get("n-samples", {}).values())
        store.append({"key": name, "metric": metric, "value": value, "stderr": stderr, "n": n})
    parts = [
        json.loads((folder / f"{r['key']}.json").read_text(encoding="utf-8"))
        for r in store.rows
        if (folder / f"{r['key']}.json").is_file()
    ]
    atomic_write_json(store.dir / RESULTS_JSON, _merge(parts))
    summary = _summary(store.rows, tasks, spec, window, model_name)
    store.write_summary(summary)
    return {**summary, "out_dir": str(store.dir)}


def _summary(
    rows: list[dict[str, Any]],
    tasks: Sequence[str],
    spec: RopeConfig | None,
    window: int | None,
    model_name: str,
) -> dict[str, Any]:
    from longqa.eval.runner import spec_label

    by = {r["key"]: r for r in rows}
    done = [t for t in tasks if t in by] + [k for k in by if k not in tasks]
    table = {t: {k: by[t][k] for k in ("metric", "value", "stderr", "n")} for t in done}
    summary: dict[str, Any] = {
        "task": "harness",
        "model": model_name,
        "rope": spec_label(spec),
        "rope_spec": spec.model_dump(mode="json") if spec else None,
        "window": window,
        "tasks": table,
        "by_task": {f"{t} {v['metric']}": v["value"] for t, v in table.items()},
        "n": sum(int(v["n"] or 0) for v in table.values()),
    }
    if len(table) == 1:
        (only,) = table.values()
        summary["metric"], summary[only["metric"]] = only["metric"], only["value"]
    return summary
