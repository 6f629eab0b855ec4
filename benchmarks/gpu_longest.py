"""Longest-length stage of ``gpu_check.sh``: the longest trainable context per variant, beside
the planner's.

Usage (normally through ``benchmarks/gpu_check.py longest``)::

    from gpu_longest import run_longest_stage
    run_longest_stage(env, out_dir, ["llama3-8b"], ["longqa all"], start=16384, resolution=8192,
                      cap=1 << 20)

Per (model, variant) of :mod:`gpu_train`: one step at lengths doubling from ``start`` until one
runs out of memory, then bisection to ``resolution`` tokens; a step whose time (extrapolated as
length²) would pass the stage's time box ends the search ("time box"). Written to ``longest.md``.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from gpu_train import (
    SHAPES,
    VARIANTS,
    Env,
    apply_variant,
    build_model,
    model_shape,
    plan_overrides,
    table,
    try_step,
)


def find_longest(fits: Any, start: int, resolution: int, cap: int) -> tuple[int, str]:
    """Largest multiple of ``resolution`` for which ``fits(n)`` is True (doubling, then bisection).

    ``fits`` returns True, False, or None when the time box stops the search; returns the length and
    why the search ended ("OOM bracket", "cap", "time box").
    """
    ok = fits(start)
    if not ok:
        return 0, "time box" if ok is None else "OOM at start"
    good, bad = start, None
    while bad is None:
        if good * 2 > cap:
            return good, "cap"
        ok = fits(good * 2)
        if ok is None:
            return good, "time box"
        good, bad = (good * 2, None) if ok else (good, good * 2)
    while bad - good > resolution:
        mid = (good + bad) // 2 // resolution * resolution
        if mid <= good:
            break
        ok = fits(mid)
        if ok is None:
            return good, "time box"
        good, bad = (mid, bad) if ok else (good, mid)
    return good, "OOM bracket"


def run_longest_stage(env: Env, out: Path, models: list[str], variants: list[str], start: int,
                      resolution: int, cap: int) -> list[list[Any]]:  # fmt: skip
    """Longest trainable length per (model, variant) within the time box, beside the planner's."""
    import torch

    from longqa.config.recipe import load_recipe
    from longqa.plan.memory import GB, longest_fitting_length

    rows: list[list[Any]] = []
    gpu_gb = torch.cuda.get_device_properties(0).total_memory / GB if env.device == "cuda" else 80.0
    for name in models:
        model = build_model(env, name)
        for variant in variants:
            apply_variant(env, model, name, variant)
            timing: dict[int, float] = {}

            def fits(n: int, variant: str = variant, timing: dict = timing, model: Any = model,
                     name: str = name) -> bool | None:  # fmt: skip
                if timing:
                    k = max(timing)
                    if timing[k] * (n / k) ** 2 > env.left:
                        return None
                res = try_step(env, model, variant, n)
                if res is not None:
                    timing[n] = res[1]
                print(f"[{name} / {variant}] {n:,}: {'fits' if res else 'OOM'}", flush=True)
                return res is not None

            if not env.dry_run:
                try_step(env, model, variant, start)  # warm-up
            n, why = find_longest(fits, start, resolution, cap)
            plan_len = None
            if not VARIANTS[variant].get("liger"):
                recipe = load_recipe(SHAPES[name]["recipe"], plan_overrides(variant))
                plan_len = longest_fitting_length(recipe, model_shape(name), gpu_gb)
            err = f"{100 * (plan_len - n) / n:+.0f}%" if plan_len and why == "OOM bracket" else ""
            rows.append([name, variant, f"{n:,}", why, f"{plan_len:,}" if plan_len else "—", err])
            from longqa.patch.kernels import revert_kernels

            revert_kernels(model.get_base_model())
            title = f"### Longest trainable length (doubling from {start:,}, then bisection to "
            title += f"{resolution:,}; cap {cap:,}; planner for {gpu_gb:.0f} GB)"
            head = ["model", "variant", "longest measured", "search ended by", "planner",
                    "planner error"]  # fmt: skip
            (out / "longest.md").write_text(f"{title}\n\n{table(head, rows)}\n")
        del model
        gc.collect()
    return rows
