"""Training under Ctrl-C, full disks and kills: stop at a step on every rank, whole checkpoints only.

Usage (``longqa.train.trainer.run_training`` does this)::

    stop = StopOnSignal()
    trainer.add_callback(stop)
    trainer.train(resume_from_checkpoint=resumable_checkpoint(phase_dir, previous=False))
    stop.raise_if_stopped()      # Interrupted on every rank, after the step's checkpoint is saved

* :class:`StopOnSignal` all-reduces the stop flag (:mod:`longqa.core.interrupt`) at every step end
  (max over ranks, so a signal to one rank stops all at the same step), then has the Trainer save a
  checkpoint of that step and end; ``--resume`` continues from it.
* :func:`save_checkpoint_safely` runs the Trainer's checkpoint save as a protected section, writes
  ``longqa_checkpoint.json`` (every file's size) once the checkpoint is complete, and turns a
  failed write (full disk, read-only folder) into one line naming the checkpoint, removing the
  half-written one: the previous checkpoint stays the newest.
* :func:`resumable_checkpoint` checks the newest checkpoint before resuming (the size record, JSON
  files parse, safetensors headers and ``torch.save`` archives complete); an incomplete one is
  one line naming it, or, with ``previous=True`` (``--resume-from-previous``), set aside as
  ``incomplete-checkpoint-N`` and the newest complete one used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from longqa.core.errors import LongqaError
from longqa.core.faults import write_failed
from longqa.core.interrupt import Interrupted, protected, stop_requested
from longqa.core.paths import atomic_write_json, atomic_write_text

MARKER = "longqa_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def any_rank_stopping() -> bool:
    """The stop flag, max over ranks (the flag itself in a single process)."""
    from longqa.train.distributed import all_ranks_sum

    return all_ranks_sum(1.0 if stop_requested() else 0.0) > 0


class StopOnSignal(TrainerCallback):
    """Ends training at the first step end after a stop request on any rank, saving that step."""

    def __init__(self) -> None:
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if any_rank_stopping():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_stopped(self) -> None:
        if self.stopped:
            raise Interrupted()


def save_checkpoint_safely(trainer: Any, save: Any, model: Any, trial: Any) -> None:
    """Run ``save(model, trial)`` (the Trainer's own ``_save_checkpoint``) as described above."""
    run_dir = Path(trainer._get_output_dir(trial=trial))
    folder = run_dir / f"checkpoint-{trainer.state.global_step}"
    with protected():
        try:
            save(model, trial)
            if trainer.args.should_save:
                sizes = {
                    str(p.relative_to(folder)): p.stat().st_size
                    for p in sorted(folder.rglob("*"))
                    if p.is_file() and p.name != MARKER
                }
                atomic_write_json(
                    folder / MARKER, {"step": trainer.state.global_step, "files": sizes}
                )
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not _is_write_error(exc):
                raise
            if trainer.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            raise write_failed(folder, exc) from None


def _is_write_error(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("write", "space", "read-only", "file", "disk"))


def checkpoint_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` is not a complete checkpoint (``None`` when it is)."""
    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        return "trainer_state.json missing"
    marker = folder / MARKER
    if marker.is_file():
        try:
            sizes = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError):
            return f"{MARKER} unreadable"
        for name, size in sizes.items():
            path = folder / name
            if not path.is_file():
                return f"{name} missing"
            if path.stat().st_size != size:
                return f"{name} truncated ({path.stat().st_size} of {size} bytes)"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        why = _file_problem(path)
        if why is not None:
            return f"{path.relative_to(folder)} {why}"
    return None


def _file_problem(path: Path) -> str | None:
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "is not valid JSON"
    elif path.suffix == ".safetensors":
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "truncated"
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(fh.read(n))
            except ValueError:
                return "truncated (header)"
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if path.stat().st_size < 8 + n + max(ends, default=0):
            return "truncated"
    elif path.suffix in (".pt", ".pth", ".bin"):
        if not zipfile.is_zipfile(path):
            return "truncated (not a complete torch.save archive)"
    return None


def drop_log_rows_after(log: Path, phase: str, step: int) -> int:
    """Remove the rows of ``phase`` past ``step`` from a ``train_log.jsonl`` (resuming from an
    earlier checkpoint repeats those steps); returns how many were removed."""
    if not log.is_file():
        return 0
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not (row.get("phase") == phase and int(row.get("step", 0)) > step):
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(log, "".join(kept))
    return len(lines) - len(kept)


def resumable_checkpoint(phase_dir: Path, previous: bool, say: Any = print) -> str | None:
    """The newest complete checkpoint of ``phase_dir`` (``None`` when there is none); see the
    module docstring for an incomplete newest one."""
    found = sorted(
        (int(m.group(1)), p)
        for p in (phase_dir.iterdir() if phase_dir.is_dir() else [])
        if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    while found:
        step, path = found.pop()
        why = checkpoint_problem(path)
        if why is None:
            return str(path)
        earlier = found[-1][1].name if found else None
        if not previous:
            then = f"continue from {earlier}" if earlier else "start the phase over"
            raise LongqaError(f"{path} is incomplete ({why}); add --resume-from-previous to {then}")
        aside = path.with_name(f"incomplete-{path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        say(f"notice: {path} is incomplete ({why}); set aside as {aside.name}")
    return None
