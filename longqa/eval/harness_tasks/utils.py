"""Functions the shipped lm-eval task YAMLs name with ``!function utils.<name>``.

lm-eval imports this file by path; it scores with longqa's own LongBench rules
(:mod:`longqa.eval.passage_retrieval`), so a harness run and ``longqa eval passage-retrieval`` agree
on what a hit is.
"""

from __future__ import annotations

import re
from typing import Any

from longqa.eval.passage_retrieval import paragraph_count, sample_score


def _gold(answers: list[str]) -> int:
    match = re.search(r"Paragraph (\d+)", answers[0]) if answers else None
    if match is None:
        raise ValueError(f"answers {answers!r}: no 'Paragraph N' to score against")
    return int(match.group(1)) - 1


def process_passage_retrieval(dataset: Any) -> Any:
    """Add ``count`` (numbered paragraphs, as the prompt states them), ``choices`` ("Paragraph 1"
    … "Paragraph count") and ``gold`` (index of the answer among them) to every row."""

    def extra(row: dict[str, Any]) -> dict[str, Any]:
        count = paragraph_count(row["context"], "en")
        return {
            "count": count,
            "choices": [f"Paragraph {i}" for i in range(1, count + 1)],
            "gold": _gold(row["answers"]),
        }

    return dataset.map(extra)


def retrieval_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """LongBench's retrieval score of the generated answer, and whether it is a clean hit."""
    score = sample_score(results[0], doc["answers"], "en")
    return {"score": score, "exact": float(score == 1.0)}
