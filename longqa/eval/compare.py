"""Side-by-side comparison of two eval runs (their ``summary.json``).

Usage::

    from longqa.eval.compare import compare_runs
    rows = compare_runs("runs/pk-none", "runs/pk-yarn")   # [(metric, value1, value2, delta), ...]

The headline metric (the summary's ``"metric"`` key) comes first, then every ``by_length``,
``by_depth`` and ``by_task`` (RULER) entry either run has; a value missing from one run shows as
``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longqa.eval.runner import read_run

Row = tuple[str, Any, Any, float | None]


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    head = summary.get("metric")
    if head and head in summary:
        flat[head] = summary[head]
    for key in ("accuracy", "score", "perplexity", "n"):
        if key in summary and key not in flat:
            flat[key] = summary[key]
    for group in ("by_length", "by_depth", "by_task"):
        for k, v in (summary.get(group) or {}).items():
            flat[f"{group.split('_')[1]} {k}"] = v
    return flat


def _sort_key(name: str) -> tuple[int, str, float]:
    group, _, value = name.partition(" ")
    try:
        return (1, group, float(value))
    except ValueError:
        return (0 if not value else 1, group, 0.0)


def compare_runs(run1: str | Path, run2: str | Path) -> tuple[dict[str, Any], list[Row]]:
    """``(info, rows)``: info has both summaries' task/model/rope; rows are metric comparisons."""
    s1, s2 = read_run(run1), read_run(run2)
    f1, f2 = _flat(s1), _flat(s2)
    names = list(dict.fromkeys([*f1, *f2]))
    head = [n for n in names if " " not in n]
    rest = sorted((n for n in names if " " in n), key=_sort_key)
    rows: list[Row] = []
    for name in head + rest:
        a, b = f1.get(name), f2.get(name)
        num = isinstance(a, int | float) and isinstance(b, int | float)
        rows.append((name, a, b, (b - a) if num else None))
    info = {
        "tasks": (s1.get("task"), s2.get("task")),
        "models": (s1.get("model"), s2.get("model")),
        "ropes": (s1.get("rope"), s2.get("rope")),
    }
    return info, rows


def format_value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
