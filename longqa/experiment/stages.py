"""Stages cached by a fingerprint of their inputs: a rerun skips what is finished.

Usage::

    stages = Stages(Path("runs/exp"), console)
    result = stages.run("train/paraphrase", {"recipe": ..., "data": data_fp}, lambda folder: ...)

Each stage works in ``<out>/<name>/`` and, when it returns, records ``<out>/stages/<name>.json``
(fingerprint, inputs, result, seconds) atomically. A later run with the same inputs returns the
recorded result without running; a stage whose inputs changed starts over in an emptied folder; a
stage killed midway is called again in its folder with the same inputs, and continues (training
from its last checkpoint, evaluations from their ``results.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longqa.core.paths import atomic_write_json

STATE_DIR = "stages"


def fingerprint(inputs: Any) -> str:
    """Stable 16-hex digest of JSON-able ``inputs`` (key order does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def selected(name: str, only: list[str]) -> bool:
    """``name`` is one of ``only``, or lies under one ending in "/" (``train/``: every training)."""
    return any(name == p or (p.endswith("/") and name.startswith(p)) for p in only)


class Stages:
    """Runs named stages under ``out``; ``ran`` and ``skipped`` list what each call did."""

    def __init__(self, out: Path, console: Any = None, only: list[str] | None = None) -> None:
        self.out = Path(out)
        self.console = console
        self.only = only
        self.deferred: list[str] = []
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.fingerprints: dict[str, str] = {}

    def _state(self, name: str, suffix: str = "") -> Path:
        return self.out / STATE_DIR / f"{name.replace('/', '__')}{suffix}.json"

    def record(self, name: str) -> dict[str, Any] | None:
        path = self._state(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def finished(self) -> list[str]:
        folder = self.out / STATE_DIR
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.stem.endswith(".started"))

    def finished_names(self) -> list[str]:
        """Names of the finished stages (as passed to :meth:`run`)."""
        folder = self.out / STATE_DIR
        if not folder.is_dir():
            return []
        return sorted(
            json.loads(p.read_text(encoding="utf-8")).get("name") or p.stem.replace("__", "/")
            for p in folder.glob("*.json")
            if not p.stem.endswith(".started")
        )

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], Any]) -> Any:
        """Return ``fn(folder)``'s result, or the recorded one when ``inputs`` are unchanged."""
        fp = fingerprint(inputs)
        self.fingerprints[name] = fp
        rec = self.record(name)
        if rec is not None and rec.get("fingerprint") == fp:
            self.skipped.append(name)
            self._say(f"[dim]stage {name}: finished earlier, skipped[/]")
            return rec["result"]
        heavy = name.split("/")[0] in ("train", "eval", "effective")
        if heavy and self.only is not None and not selected(name, self.only):
            self.defer(name)
            return None
        folder = self.out / name
        started = self._state(name, ".started")
        prev = json.loads(started.read_text(encoding="utf-8")) if started.is_file() else {}
        if folder.exists() and prev.get("fingerprint") != fp:
            shutil.rmtree(folder)  # inputs changed (or unknown): start this stage over
        folder.mkdir(parents=True, exist_ok=True)
        self._state(name).unlink(missing_ok=True)
        atomic_write_json(started, {"fingerprint": fp})
        verb = "continuing" if prev.get("fingerprint") == fp else "running"
        self._say(f"[bold]stage {name}[/]: {verb}")
        t0 = time.monotonic()
        result = fn(folder)
        seconds = round(time.monotonic() - t0, 1)
        atomic_write_json(
            self._state(name),
            {"fingerprint": fp, "inputs": inputs, "result": result, "seconds": seconds},
        )
        self.ran.append(name)
        return result

    def defer(self, name: str) -> None:
        self.deferred.append(name)
        self._say(f"[dim]stage {name}: not selected, left for a later piece[/]")

    def _say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)
