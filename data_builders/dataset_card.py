"""The dataset card of a mixture: a markdown summary written next to the shards as ``README.md``.

``render_card(stats)`` takes the stats dict of ``data_builders.mix.build`` and renders the sources
table (path, formats, usable / selected / skipped records), the per-task and per-language counts
and the length histogram, so a reader sees what the training set holds without opening it.
"""

from __future__ import annotations

from typing import Any

_BAR = 30


def _bar(count: int, top: int) -> str:
    return "█" * (round(_BAR * count / top) if top else 0)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _counts_table(title: str, key: str, counts: dict[str, int]) -> list[str]:
    top = max(counts.values(), default=0)
    rows = [[k, v, _bar(v, top)] for k, v in counts.items()]
    return [f"## {title}", "", *_table([key, "samples", ""], rows), ""]


def render_card(stats: dict[str, Any]) -> str:
    """Markdown card for a mixture's ``stats`` (see :func:`data_builders.mix.build`)."""
    lines = [
        "# Dataset card",
        "",
        f"Mixture of {len(stats['sources'])} sources: **{stats['samples']} samples**, "
        f"shuffled with seed {stats['seed']}. Built by `longqa build-data --task mix`.",
        "",
        "## Sources",
        "",
    ]
    rows = []
    for src in stats["sources"]:
        formats = ", ".join(f"{k} {v}" for k, v in src["formats"].items()) or "-"
        skipped = ", ".join(f"{k} {v}" for k, v in src["skipped"].items()) or "0"
        if src.get("empty_files"):
            skipped += f"; empty files {src['empty_files']}"
        rows.append(
            [src["name"], f"`{src['path']}`", formats, src["available"], src["selected"], skipped]
        )
    lines += _table(["source", "path", "formats", "usable", "selected", "skipped"], rows)
    lines += ["", *_counts_table("Tasks", "task", stats["tasks"])]
    lines += _counts_table("Languages", "language", stats["languages"])
    hist = stats["length_histogram"]
    edges, counts = hist["edges"], hist["counts"]
    top = max(counts, default=0)
    rows = [
        [f"{edges[i]}–{edges[i + 1]}", c, _bar(c, top)] for i, c in enumerate(counts) if c or top
    ]
    lines += [f"## Lengths ({stats['length_unit']})", ""]
    lines += _table(["length", "samples", ""], rows)
    lines.append("")
    return "\n".join(lines)
