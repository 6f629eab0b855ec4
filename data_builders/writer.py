"""Resumable, crash-safe JSONL shard writer shared by every builder, plus stats helpers.

Usage::

    with ShardWriter(out_dir, shard_size=1000, prefix="data") as w:
        done = w.done_ids()                 # ids already in the output (resume)
        for i in range(n):
            sid = f"pmdqa-{i:06d}"
            if sid in done or sid in w.state.get("dropped", {}):
                continue
            w.write(sample_dict)            # returns once the line is in the OS (survives SIGKILL)
    write_stats(out_dir, stats)

Layout of ``out_dir``: finished shards ``data-00000.jsonl``, ``data-00001.jsonl`` … (each finalised by
rename, so a shard name never refers to a half-written file), one in-progress file
``.data.partial.jsonl`` (hidden: ``read_samples`` skips it) that receives appended, flushed lines, and
``.build_state.json`` (builder counters and dropped ids, written atomically). A killed build loses only
what ``write`` had not yet returned for; on reopening, complete lines of the partial file are kept, a
torn last line is cut, and ids already present are skipped on write, so a rerun never duplicates.

An open writer holds ``out_dir``'s lock (:mod:`longqa.core.folder_lock`: a second process on the
folder stops with one line naming the holder, so no shard is renamed under another writer) and is a
graceful region for Ctrl-C/SIGTERM (:mod:`longqa.core.interrupt`): ``write`` finishes the sample in
hand, then raises ``Interrupted``; the partial shard is finalised on the way out. A full disk or a
read-only folder is one ``WriteFailed`` line naming the file; complete lines already written stay.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.faults import WriteFailed, writing
from longqa.core.folder_lock import output_lock
from longqa.core.interrupt import check_stop, graceful, protected
from longqa.core.paths import atomic_write_json, atomic_write_text

STATE_FILE = ".build_state.json"


class ShardWriter:
    """Append samples (dicts with an ``id``) to JSONL shards in ``out_dir``; see module docstring."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        shard_size: int = 1000,
        prefix: str = "data",
        fsync: bool = False,
    ) -> None:
        if shard_size < 1:
            raise LongqaError(f"shard_size must be >= 1 (got {shard_size})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise LongqaError(f"shard prefix '{prefix}' must be letters, digits, '_', '-' or '.'")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.prefix = prefix
        self.fsync = fsync
        self._ids: set[str] = set()
        self._partial = self.out_dir / f".{prefix}.partial.jsonl"
        self._fh: Any = None
        self._partial_count = 0
        self.written_this_run = 0
        self.state: dict[str, Any] = {}
        self._hold: contextlib.ExitStack | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> ShardWriter:
        hold = contextlib.ExitStack()
        hold.enter_context(output_lock(self.out_dir))
        hold.enter_context(graceful())
        try:
            self._open()
        except BaseException:
            hold.close()
            raise
        self._hold = hold
        return self

    def _open(self) -> None:
        for shard in self.shards():
            self._ids.update(_read_ids(shard, tolerate_torn_tail=False))
        kept: list[str] = []
        if self._partial.exists():
            kept = _complete_lines(self._partial)
            fresh = []
            for line in kept:
                sid = json.loads(line)["id"]
                if sid not in self._ids:
                    self._ids.add(sid)
                    fresh.append(line)
            kept = fresh
            with writing(self._partial):
                atomic_write_text(self._partial, "".join(kept))
        self._partial_count = len(kept)
        with writing(self._partial):
            self._fh = open(self._partial, "a", encoding="utf-8")
        state_path = self.out_dir / STATE_FILE
        if state_path.exists():
            try:
                self.state = json.loads(state_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self.state = {}
        if self._partial_count >= self.shard_size:
            self._finalise()

    def close(self) -> None:
        """Finalise the partial shard (if any lines), release the file and the folder."""
        try:
            if self._fh is None:
                return
            if self._partial_count:
                self._finalise(reopen=False)
            else:
                self._fh.close()
                self._fh = None
                self._partial.unlink(missing_ok=True)
        finally:
            self._release()

    def _release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        if self._hold is not None:
            hold, self._hold = self._hold, None
            hold.close()

    def __enter__(self) -> ShardWriter:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, WriteFailed):  # the disk refused: keep the partial file for the rerun
            self._release()
        else:
            self.close()

    # -- API -------------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        """Ids already in the output (finished shards and the partial file)."""
        return set(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def write(self, sample: dict[str, Any]) -> bool:
        """Append one sample; ``False`` (and nothing written) when its id is already present."""
        if self._fh is None:
            raise RuntimeError("ShardWriter is not open (use it as a context manager)")
        sid = sample.get("id")
        if not isinstance(sid, str) or not sid:
            raise ValueError("every sample needs a non-empty string 'id'")
        if sid in self._ids:
            return False
        with writing(self._partial):
            self._fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        self._ids.add(sid)
        self._partial_count += 1
        self.written_this_run += 1
        if self._partial_count >= self.shard_size:
            self._finalise()
        check_stop()  # the sample is written; a Ctrl-C stops the build here
        return True

    def save_state(self, state: dict[str, Any] | None = None) -> None:
        """Persist builder bookkeeping (counters, dropped ids) atomically next to the shards."""
        if state is not None:
            self.state = state
        with writing(self.out_dir / STATE_FILE):
            atomic_write_json(self.out_dir / STATE_FILE, self.state)

    def shards(self) -> list[Path]:
        """Finished shard files in order."""
        return sorted(self.out_dir.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9].jsonl"))

    def iter_samples(self) -> Iterable[dict[str, Any]]:
        """Every sample in the output (finished shards, then the partial file)."""
        files = self.shards() + ([self._partial] if self._partial.exists() else [])
        for f in files:
            for line in _complete_lines(f):
                yield json.loads(line)

    # -- internals -------------------------------------------------------------------------------
    def _finalise(self, reopen: bool = True) -> None:
        with protected(), writing(self._partial):
            fh, self._fh = self._fh, None
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            existing = self.shards()
            index = int(existing[-1].stem.rsplit("-", 1)[1]) + 1 if existing else 0
            target = self.out_dir / f"{self.prefix}-{index:05d}.jsonl"
            os.replace(self._partial, target)
            self._partial_count = 0
            if reopen:
                self._fh = open(self._partial, "a", encoding="utf-8")


def _complete_lines(path: Path) -> list[str]:
    """Lines of ``path`` that end in a newline and parse as a JSON object with an id."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    lines = data[: end + 1].decode("utf-8", errors="replace").splitlines(keepends=True)
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            out.append(line)
    return out


def _read_ids(path: Path, tolerate_torn_tail: bool) -> set[str]:
    ids = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                if not tolerate_torn_tail:
                    raise LongqaError(
                        f"{path}:{lineno}: not a sample line (JSON with 'id')"
                    ) from None
    return ids


def histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, Any]:
    """Counts of ``values`` in bins ``[edges[i], edges[i+1])`` (last bin closed).

    Returns ``{"edges": [...], "counts": [...], "below": n, "above": n}``.
    """
    counts = [0] * (len(edges) - 1)
    below = above = 0
    for v in values:
        if v < edges[0]:
            below += 1
        elif v > edges[-1]:
            above += 1
        else:
            i = min(_bisect_right(edges, v) - 1, len(counts) - 1)
            counts[i] += 1
    return {"edges": list(edges), "counts": counts, "below": below, "above": above}


def _bisect_right(edges: Sequence[float], v: float) -> int:
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if v < edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def length_histogram(
    lengths: Sequence[int], bins: int = 10, lo: int = 0, hi: int | None = None
) -> dict[str, Any]:
    """Equal-width histogram of token lengths over ``[lo, hi]`` (``hi`` defaults to the maximum);
    lengths outside are counted in ``below`` / ``above``."""
    top = hi if hi is not None else max(lengths, default=0)
    step = max(1, math.ceil((top - lo) / bins)) if top > lo else 1
    return histogram(lengths, [lo + i * step for i in range(bins + 1)])


def depth_histogram(depths: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Histogram of relative depths in [0, 1] (0 = start of the context)."""
    return histogram(depths, [round(i / bins, 6) for i in range(bins + 1)])


def write_stats(out_dir: str | os.PathLike[str], stats: dict[str, Any]) -> Path:
    """Write ``stats.json`` atomically in ``out_dir``."""
    return atomic_write_json(Path(out_dir) / "stats.json", stats)
