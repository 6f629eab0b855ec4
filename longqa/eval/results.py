"""Resumable result files of an eval run: ``results.jsonl``, ``run.json``, ``summary.json``.

Usage::

    store = ResultStore("runs/pk", config={"task": "passkey", "lengths": [4096]})
    if not store.done("L4096-t0"):
        store.append({"key": "L4096-t0", "correct": True})   # flushed line by line
    store.write_summary({"task": "passkey", "metric": "accuracy", "accuracy": 1.0})
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.faults import writing
from longqa.core.paths import atomic_write_json, atomic_write_jsonl

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"


class ResultStore:
    """``results.jsonl`` + ``run.json`` + ``summary.json`` in one folder; resumable.

    ``config`` describes the run; reopening a folder whose ``run.json`` differs raises instead of
    mixing results of two settings (pass ``overwrite=True`` to start over).
    """

    def __init__(
        self, out_dir: str | Path, config: dict[str, Any] | None = None, overwrite: bool = False
    ) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results_path = self.dir / RESULTS_FILE
        run_path = self.dir / RUN_FILE
        if overwrite:
            for name in (RESULTS_FILE, SUMMARY_FILE, RUN_FILE):
                (self.dir / name).unlink(missing_ok=True)
        if config is not None:
            config = json.loads(json.dumps(config))  # normalise (tuples → lists, keys → str)
            if run_path.exists() and self.results_path.exists():
                old = json.loads(run_path.read_text(encoding="utf-8"))
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                if diff:
                    raise LongqaError(
                        f"{self.dir} holds a run with different settings ({', '.join(diff)}); "
                        f"use another --out or --overwrite"
                    )
            atomic_write_json(run_path, config)
        self.rows: list[dict[str, Any]] = self._load()
        self._keys = {r["key"] for r in self.rows}

    def _load(self) -> list[dict[str, Any]]:
        if not self.results_path.exists():
            return []
        rows, dropped = [], False
        with open(self.results_path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    dropped = True  # a run killed mid-write leaves a partial last line
                    continue
                if not isinstance(row, dict) or "key" not in row:
                    raise LongqaError(f"{self.results_path}:{lineno}: field 'key' missing")
                rows.append(row)
        if dropped:
            atomic_write_jsonl(self.results_path, rows)
        return rows

    def done(self, key: str) -> bool:
        return key in self._keys

    def append(self, row: dict[str, Any]) -> None:
        """Add one finished sample (flushed to disk before returning)."""
        if "key" not in row:
            raise ValueError("result rows need a 'key'")
        with writing(self.results_path), open(self.results_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)
        self._keys.add(row["key"])

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return atomic_write_json(self.dir / SUMMARY_FILE, summary)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a finished run folder (errors name the missing file)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise LongqaError(f"{path}: not found (is {run_dir} an eval --out folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{path}: invalid JSON ({exc.msg})") from None
