"""Registry of dataset builders: adding one is one module and one line here.

Each entry maps a task name (``longqa build-data --task NAME``) to ``"module:function"``; the module
is imported only when its builder runs. A builder function has the signature
``build(options: <its pydantic Options model>) -> dict`` (the stats it also writes to stats.json),
and its module exposes ``Options`` (a pydantic model of its flags) and a docstring used as help.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from longqa.core.errors import LongqaError

BUILDERS: dict[str, str] = {
    "paraphrase-mdqa": "data_builders.paraphrase_mdqa:build",
    "book-summary": "data_builders.book_summary:build",
    "paper-summary": "data_builders.paper_summary:build",
    "paper-qa": "data_builders.paper_qa:build",
    "long-pretrain": "data_builders.long_pretrain:build",
    "mix": "data_builders.mix:build",
    "passage-retrieval": "data_builders.longbench_pr:build",
}


def available_builders() -> list[str]:
    return sorted(BUILDERS)


def get_builder(task: str) -> Callable[..., Any]:
    """The builder function for ``task`` (imported lazily)."""
    if task not in BUILDERS:
        raise LongqaError(f"unknown task '{task}'; available: {', '.join(available_builders())}")
    module_name, func = BUILDERS[task].split(":")
    return getattr(importlib.import_module(module_name), func)


def get_builder_module(task: str) -> Any:
    if task not in BUILDERS:
        raise LongqaError(f"unknown task '{task}'; available: {', '.join(available_builders())}")
    return importlib.import_module(BUILDERS[task].split(":")[0])


def summarize_builder(task: str) -> str:
    """The first line of the task's module docstring (what ``longqa build-data --help`` lists)."""
    first = ((get_builder_module(task).__doc__ or "").strip().splitlines() or [""])[0]
    return re.sub(r"\s*\(``--task [\w-]+``\)", "", first).strip()


def describe_builder(task: str) -> str:
    """A task's help: its module docstring (behaviour, malformed-input handling) and its options
    with types, defaults and descriptions, as ``longqa build-data --task T --describe`` prints."""
    module = get_builder_module(task)
    lines = [f"task {task}", "", (module.__doc__ or "").strip(), "", "options (flag = field name):"]
    for name, field in module.Options.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        desc = f" — {field.description}" if field.description else ""
        a = field.annotation
        ann = a.__name__ if isinstance(a, type) else str(a)
        lines.append(
            f"  --{name.replace('_', '-')} ({ann.replace('typing.', '')}, {default}){desc}"
        )
    return "\n".join(lines)
