"""RULER's scoring and the effective-context figure.

``string_match_all`` (niah, vt, cwe, fwe): per sample, the share of expected strings found in the
prediction (case-insensitive substring), averaged, ×100. ``string_match_part`` (qa): per sample,
1 when any expected string is found. Both round to 2 decimals, as RULER's
``scripts/eval/synthetic/constants.py``; predictions are cleaned as its ``evaluate.py`` does (strip,
control characters to newlines).

The effective context (RULER §4) is the longest tested length whose average score over the tasks
is at or above a threshold, by default 85.6 (Llama-2-7B's average at 4K in the RULER paper).

Usage::

    string_match_all(["a 12 b"], [["12", "34"]])   # 50.0
    effective_context({4096: 90.0, 8192: 70.0})      # 4096
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_THRESHOLD = 85.6
_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(pred: str) -> str:
    return _CONTROL.sub("\n", pred.strip()).strip()


def sample_score(pred: str, refs: Sequence[str], metric: str) -> float:
    """One sample's score in [0, 100] under ``metric`` (``all`` or ``part``)."""
    p = postprocess(pred).lower()
    hits = [1.0 if r.lower() in p else 0.0 for r in refs]
    if not hits:
        return 0.0
    return 100.0 * (max(hits) if metric == "part" else sum(hits) / len(hits))


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    scores = [sample_score(p, r, "all") for p, r in zip(preds, refs, strict=True)]
    return round(sum(scores) / len(scores), 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    scores = [sample_score(p, r, "part") for p, r in zip(preds, refs, strict=True)]
    return round(sum(scores) / len(scores), 2)


def effective_context(
    by_length: dict[int, float] | dict[str, float], threshold: float = DEFAULT_THRESHOLD
) -> int:
    """Longest length whose average score is ``>= threshold`` (0 when none is)."""
    passing = [int(k) for k, v in by_length.items() if v is not None and v >= threshold]
    return max(passing, default=0)
