"""Statistics of the experiment report: Wilson score intervals and a seeded bootstrap.

Usage::

    wilson(7, 20)                        # (0.1539, 0.5922): 95% interval of 7 hits in 20
    proportion([True, False, True])      # {"value": 0.667, "lo": ..., "hi": ..., "n": 3}
    mean_interval([0.2, 0.9, 1.0])       # bootstrap 95% interval of a mean of scores in [0, 1]

Wilson (1927), "Probable inference, the law of succession, and statistical inference", JASA 22:
centre ``(p + z²/2n) / (1 + z²/n)``, half-width ``z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)``;
it stays inside [0, 1] and is sane at p = 0 or 1, unlike the normal approximation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any


def z_value(confidence: float = 0.95) -> float:
    """Two-sided normal quantile, e.g. 1.95996 for 95%."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``hits / n`` (``(0, 1)`` when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= hits <= n:
        raise ValueError(f"hits must lie in [0, n] (got {hits} of {n})")
    z = z_value(confidence)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(flags: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    """Share of true flags with its Wilson interval and n."""
    n, k = len(flags), sum(bool(f) for f in flags)
    lo, hi = wilson(k, n, confidence)
    return {"value": k / n if n else None, "lo": lo, "hi": hi, "n": n, "hits": k}


def mean_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean with a percentile-bootstrap interval (seeded, so reports are reproducible)."""
    n = len(values)
    if n == 0:
        return {"value": None, "lo": 0.0, "hi": 1.0, "n": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[int(tail * (resamples - 1))]
    hi = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return {"value": sum(values) / n, "lo": lo, "hi": hi, "n": n}


def fmt(cell: dict[str, Any] | None, digits: int = 2) -> str:
    """``0.42 [0.28, 0.57] n=40`` (``—`` for a missing cell)."""
    if not cell or cell.get("value") is None:
        return "—"
    return f"{cell['value']:.{digits}f} [{cell['lo']:.{digits}f}, {cell['hi']:.{digits}f}]"


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired outcomes: two-sided binomial test of the discordant pairs
    (``a`` right and ``b`` wrong: n10; the reverse: n01) against p = 1/2 (McNemar 1947,
    Psychometrika 12; the exact form as in scipy's ``binomtest(n10, n10 + n01)``)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths (got {len(a)} and {len(b)})")
    n10 = sum(bool(x) and not bool(y) for x, y in zip(a, b, strict=True))
    n01 = sum(bool(y) and not bool(x) for x, y in zip(a, b, strict=True))
    m, k = n10 + n01, min(n10, n01)
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    return {"n10": n10, "n01": n01, "p": p}


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    strata: Sequence[Any] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``a - b`` over paired items with a percentile-bootstrap interval; items are
    resampled as pairs (within each stratum, e.g. a split seed, when ``strata`` is given)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths (got {len(a)} and {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    if n == 0:
        return {"value": None, "lo": -1.0, "hi": 1.0, "n": 0}
    groups: dict[Any, list[float]] = {}
    for d, s in zip(diffs, strata or [0] * n, strict=True):
        groups.setdefault(s, []).append(d)
    rng = random.Random(seed)
    means = sorted(
        sum(sum(rng.choices(g, k=len(g))) for g in groups.values()) / n for _ in range(resamples)
    )
    tail = (1 - confidence) / 2
    lo = means[int(tail * (resamples - 1))]
    hi = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return {"value": sum(diffs) / n, "lo": lo, "hi": hi, "n": n}
