"""RULER-style synthetic long-context evaluation, generated offline and scored as RULER does.

Modules: ``tasks`` (the 13 tasks, templates, knobs), one generator per family (``niah``,
``variable_tracking``, ``common_words``, ``freq_words``, ``qa``), ``haystack`` and ``words``
(offline text and needles), ``prompt`` (encoding and haystack-size search), ``scoring``
(``string_match_all/part``, effective context) and ``runner`` (:func:`run_ruler`).

Usage::

    from longqa.eval.ruler import run_ruler, TASKS
    summary = run_ruler(model, tok, spec, lengths=[4096, 8192], tasks="all", samples=5, out_dir="runs/r")
"""

from longqa.eval.ruler.runner import run_ruler, summarize
from longqa.eval.ruler.scoring import DEFAULT_THRESHOLD, effective_context
from longqa.eval.ruler.tasks import TASKS, resolve_tasks

__all__ = [
    "DEFAULT_THRESHOLD",
    "TASKS",
    "effective_context",
    "resolve_tasks",
    "run_ruler",
    "summarize",
]
