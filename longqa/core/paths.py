"""Filesystem helpers shared by every module: user cache dir and atomic writes.

Atomic writes go to a temporary file in the same directory and are renamed into place, so a killed
process never leaves a half-written output behind. The temporary file gets the mode an ordinary
``open()`` would give (``0o666`` less the process umask: 644 under umask 022), not ``mkstemp``'s
private 600; :func:`keep_umask` does the same for files other libraries write privately (safetensors
writes 600) before a folder is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Root of longqa's cache (``$LONGQA_CACHE`` or ``~/.cache/longqa``), created on demand."""
    root = os.environ.get("LONGQA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "longqa"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_umask() -> int:
    """The process umask (read from ``/proc`` where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def keep_umask(path: str | os.PathLike[str]) -> Path:
    """Give ``path`` (a file, or a folder and everything in it) the modes ``open()`` and
    ``mkdir()`` give under the process umask: files ``0o666 & ~umask``, folders ``0o777 & ~umask``."""
    path, mask = Path(path), current_umask()
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file + rename), with the umask's file mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Write one JSON object per line atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def replace_folder(new: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Rename the finished folder ``new`` to ``dest``. An existing ``dest`` is first moved aside to
    ``.<name>.previous`` and deleted only once ``new`` is in place (moved back if that rename fails),
    so a crash or a full disk never leaves ``dest`` without a complete folder at or beside it."""
    new, dest = Path(new), Path(dest)
    if not dest.exists():
        os.replace(new, dest)
        return dest
    previous = dest.with_name(f".{dest.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(dest, previous)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(previous, dest)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return dest


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSONL file; a line that is
    not valid JSON or not an object raises a one-line ``LongqaError`` naming ``file:line``."""
    from longqa.core.errors import LongqaError

    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LongqaError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LongqaError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def shared_essays() -> Path | None:
    """The essays corpus in ``../shared/corpora/paul_graham_essays`` beside the checkout, when present.

    Tests, benchmarks, the demo and the needle haystack read it; nothing copies it into the project.
    """
    cand = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "paul_graham_essays"
    return cand if cand.is_dir() and any(cand.glob("*.txt")) else None
