"""lm-eval's task side for ``longqa eval harness``: the optional import, offline runs, task checks.

Usage::

    from longqa.eval.lm_eval_tasks import HARNESS_TASKS, offline, prepare_tasks
    tm = prepare_tasks(["longqa_mdqa_choice"], [HARNESS_TASKS])   # one-line errors, before any model
    with offline():
        ...                                                        # datasets / hub: local only

A task is runnable offline when its YAML reads local files (``dataset_path: json`` / ``parquet`` /
``csv`` … with ``dataset_kwargs.data_files``; a missing file is named), a local folder, or a hub
dataset already in the local cache; any other hub dataset fails in one line naming it and how to give
a local copy. :data:`HARNESS_TASKS` holds the YAMLs of longqa's own offline sets.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError

HARNESS_TASKS = Path(__file__).parent / "harness_tasks"
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")
INSTALL_HINT = "lm-eval is not installed: pip install 'longqa[harness]' (lm-eval>=0.4.13)"
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or a one-line error saying how to install the extra."""
    try:
        import lm_eval
    except ImportError:
        raise LongqaError(INSTALL_HINT) from None
    return lm_eval


@contextmanager
def offline() -> Iterator[None]:
    """Hub access off for datasets and huggingface_hub within the block (environment and, for
    modules imported before, their parsed flags); everything is restored on exit."""
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    flags = [("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
             ("datasets.config", "HF_DATASETS_OFFLINE")]  # fmt: skip
    saved_flags = []
    for k in _OFFLINE_VARS:
        os.environ[k] = "1"
    for module, attr in flags:
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, attr):
            saved_flags.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for mod, attr, value in saved_flags:
            setattr(mod, attr, value)


# ----------------------------------------------------------------------------------- tasks offline
def _data_files(kwargs: dict[str, Any]) -> list[str]:
    files = kwargs.get("data_files")
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(files or [])


def hub_datasets(task_manager: Any, name: str, _seen: set[str] | None = None) -> list[str]:
    """Hub datasets task or group ``name`` reads (``[]`` when all its data is local); a local file
    it names that does not exist raises a one-line error."""
    seen = _seen if _seen is not None else set()
    if name in seen:
        return []
    seen.add(name)
    entry = task_manager.task_index.get(name)
    cfg = dict(getattr(entry, "cfg", None) or {})
    needs: list[str] = []
    for child in cfg.get("task", []) if "group" in cfg else []:
        if isinstance(child, str):
            needs += hub_datasets(task_manager, child, seen)
        elif isinstance(child, dict) and isinstance(child.get("task"), str):
            needs += _config_needs({**child}, child["task"])
    if "group" not in cfg and cfg:
        needs += _config_needs(cfg, name)
    return list(dict.fromkeys(needs))


def _config_needs(cfg: dict[str, Any], name: str) -> list[str]:
    path = cfg.get("dataset_path")
    if not path or cfg.get("custom_dataset"):
        return []
    if path in LOCAL_BUILDERS:
        for f in _data_files(cfg.get("dataset_kwargs") or {}):
            if "://" not in f and not any(c in f for c in "*?[") and not Path(f).exists():
                raise LongqaError(f"task '{name}': data file not found: {f} (dataset_kwargs)")
        return []
    if Path(str(path)).expanduser().exists():
        return []
    sub = cfg.get("dataset_name")
    return [f"{path}" + (f" ({sub})" if sub else "")]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def task_manager_for(tasks: Sequence[str], include_path: Sequence[str | Path]) -> Any:
    """lm-eval's ``TaskManager`` over ``include_path`` (lm-eval's own tasks indexed too unless
    every requested task is found there); an unknown task name raises one line."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path] or None
    for p in include_path:
        if not Path(p).exists():
            raise LongqaError(f"--include-path {p}: not found")
    tm = TaskManager(include_path=paths, include_defaults=False) if paths else None
    if tm is None or any(t not in tm.task_index for t in tasks):
        tm = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in tm.task_index]
    if unknown:
        raise LongqaError(
            f"unknown lm-eval task(s): {', '.join(unknown)} (not in lm-eval's tasks"
            + (f" nor in {', '.join(map(str, include_path))})" if include_path else ")")
        )
    return tm


def check_task_loads(task_manager: Any, name: str) -> None:
    """Build task ``name`` offline; a failure is one line, naming the hub datasets it needs."""
    needs = hub_datasets(task_manager, name)
    try:
        with offline(), quiet_lm_eval():
            task_manager.load([name])
    except Exception as exc:
        if needs:
            raise LongqaError(
                f"task '{name}' needs the hub dataset {', '.join(needs)}, which is not in the "
                f"local cache (runs are offline): save it as JSONL or Parquet and point a task "
                f"YAML at it (dataset_path: json, dataset_kwargs: {{data_files: {{test: FILE}}}}) "
                f"in a folder given to --include-path"
            ) from None
        raise LongqaError(f"task '{name}' cannot be loaded: {_first_line(exc)}") from None


def with_shipped(include_path: Sequence[str | Path]) -> list[str | Path]:
    """``include_path`` plus :data:`HARNESS_TASKS` (the shipped tasks are always found)."""
    paths = list(include_path)
    return paths if HARNESS_TASKS in map(Path, paths) else [*paths, HARNESS_TASKS]


def prepare_tasks(tasks: Sequence[str], include_path: Sequence[str | Path] = ()) -> Any:
    """The ``TaskManager`` for ``tasks`` over ``include_path`` and the shipped tasks, each task
    checked to load offline (one-line errors)."""
    if not tasks:
        raise LongqaError("--tasks: give at least one lm-eval task name")
    tm = task_manager_for(tasks, with_shipped(include_path))
    for name in tasks:
        check_task_loads(tm, name)
    return tm


# ------------------------------------------------------------------------------------------ logging
_EXPECTED = ("kwarg is not of type `str`", "Passed an already-initialized model")


class _DropExpected(logging.Filter):
    """Drop lm-eval's notices that a model instance (not a name) was passed: that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _EXPECTED)


def _git_commit_hash() -> str | None:
    """What lm-eval records as ``git_hash`` (``git describe --always`` here), git's errors muted."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's log on stderr from warnings up (truncation and the like), prefixed ``lm-eval:``,
    without the expected notices; the logger's state is restored on exit."""
    logger = logging.getLogger("lm_eval")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("lm-eval: %(message)s"))
    handler.setLevel(logging.WARNING)
    handler.addFilter(_DropExpected())
    saved = logger.level, logger.propagate
    import lm_eval.evaluator as evaluator

    git_hash = getattr(evaluator, "get_git_commit_hash", None)
    if git_hash is not None:  # lm-eval's lookup lets git print "fatal: not a git repository"
        evaluator.get_git_commit_hash = _git_commit_hash
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        if git_hash is not None:
            evaluator.get_git_commit_hash = git_hash
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
