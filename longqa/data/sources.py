"""Read a dataset path in any supported file layout into records, saying what was detected.

Usage::

    from longqa.data.sources import load_dataset_records
    loaded = load_dataset_records("chat.jsonl", fmt="auto", skip_bad_rows=False)
    loaded.records, loaded.describe()        # [...], ["data: chat.jsonl → messages, 3 rows"]

Paths: a file or a folder (searched recursively, hidden files and ``stats.json`` left out).

* a file — any layout :mod:`longqa.data.files` reads (JSONL, JSON, CSV/TSV, Parquet, text; gzip,
  zstd, bzip2 or xz found by their magic bytes; a UTF-8 BOM dropped);
* a folder — its row files (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``), else its text
  files (``.txt``/``.md``: pretraining documents); anything else in it (a ``README.rst``, a dataset
  card next to row files) is left alone. When file or folder names name splits the way ``datasets``
  reads them (``data/train-00000-of-00001.parquet``, ``test.jsonl``, ``dev/``), only the ``train``
  split is read (files naming no split too) and the note says what was left out;
* a ``datasets`` folder — written by ``save_to_disk`` (``dataset_info.json``/``state.json``/
  ``dataset_dict.json``; the ``train`` split of a ``DatasetDict``, or every split when it has none),
  or a hub-style folder whose ``README.md`` YAML header declares ``configs:`` — read with
  ``datasets``; any failure there is one line naming the folder, never a traceback.

Each row goes through :func:`longqa.data.formats.convert_row`. A bad row (not JSON, unknown role,
empty conversation, no assistant turn, …) raises its one-line :class:`BadRow`, or with
``skip_bad_rows`` is skipped: counted by reason, the first of each reason shown, every location kept
in ``loaded.skips`` (``longqa train`` writes them to ``skipped_rows.txt`` in the run folder). Rows
without a user turn train as given and are counted in ``loaded.no_user``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.files import (
    ROW_SUFFIXES,
    TEXT_SUFFIXES,
    data_kind,
    read_file_rows,
    table_rows,
)
from longqa.data.formats import FORMATS, BadRow, Record, convert_row, parse_columns

MAX_FILE_LINES = 4  # more files than this are described in one line


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return any(
        (path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def is_hub_style_folder(path: Path) -> bool:
    """A local ``load_dataset`` folder: a ``README.md`` whose YAML header declares ``configs:``."""
    card = path / "README.md"
    if not card.is_file():
        return False
    head = card.read_text(encoding="utf-8-sig", errors="replace")
    return head.startswith("---") and "\nconfigs:" in head.split("\n---", 1)[0]


# split names as ``datasets`` infers them from file and folder names (data/train-0000.parquet, …)
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip


def split_of(file: Path, root: Path) -> str | None:
    """The split a file's name or folder names (under ``root``) put it in, if any."""
    for part in reversed(file.relative_to(root).parts):
        for word in re.split(r"[-_ 0-9]+", part.split(".", 1)[0].lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return None


def train_files(path: Path, files: list[Path]) -> tuple[list[Path], str]:
    """A folder's files of the ``train`` split when its file names name splits (as hub downloads
    do), so test and validation rows never leak into training; and the note saying so."""
    splits = {f: split_of(f, path) for f in files}
    if "train" not in splits.values() or set(splits.values()) == {"train"}:
        return files, ""
    kept = [f for f in files if splits[f] in ("train", None)]
    left = Counter(s for s in splits.values() if s not in ("train", None))
    shown = ", ".join(f"{k} {v} file{'s' * (v != 1)}" for k, v in sorted(left.items()))
    return kept, f"data: {path}: train split only ({shown} left out)"


def dataset_files(path: Path) -> list[Path]:
    """The data files of a folder: its row files, else its text files (sorted)."""
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and not f.name.startswith(".") and f.name != "stats.json"
    )
    rows = [f for f in files if data_kind(f) in ROW_SUFFIXES]
    texts = [f for f in files if data_kind(f) in TEXT_SUFFIXES]
    if not rows and not texts:
        known = ", ".join(sorted(ROW_SUFFIXES | TEXT_SUFFIXES))
        raise LongqaError(f"{path}: no data files in this folder (expected {known}, or .gz/.zst)")
    return rows or texts


def _datasets_folder_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a ``datasets`` folder; whatever ``datasets`` raises becomes one line naming it."""
    try:
        import datasets

        if is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path))
        splits = ["train"] if isinstance(ds, datasets.DatasetDict) and "train" in ds else None
        parts = (
            [(f"{path}[{s}]", ds[s]) for s in splits or list(ds)]
            if isinstance(ds, datasets.DatasetDict)
            else [(str(path), ds)]
        )
    except Exception as exc:  # datasets raises ValueError, FileNotFoundError, its own errors…
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "save_to_disk" if is_saved_dataset(path) else "load_dataset"
        raise LongqaError(
            f"{path}: not readable as a `datasets` {kind} folder ({exc.__class__.__name__}"
            + (f": {why[:200]}" if why else "")
            + ")"
        ) from None
    for label, split in parts:
        yield from table_rows(label, split)


def iter_source_rows(path: str | Path) -> Iterator[tuple[str, str, Any]]:
    """``(file label, where, row or BadRow)`` for every row under ``path`` (in file order)."""
    for file, _layout, rows in iter_source_files(path):
        for where, row in rows:
            yield file, where, row


def iter_source_files(
    path: str | Path, notes: list[str] | None = None
) -> Iterator[tuple[str, str, Iterator[tuple[str, Any]]]]:
    """``(file label, layout notes, rows)`` for every file (or ``datasets`` folder) under ``path``;
    what was left out of a folder is appended to ``notes``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LongqaError(f"dataset not found: {p}")
    if p.is_dir() and (is_saved_dataset(p) or is_hub_style_folder(p)):
        yield str(p), "datasets folder", _datasets_folder_rows(p)
        return
    files, note = ([p], "") if p.is_file() else train_files(p, dataset_files(p))
    if note and notes is not None:
        notes.append(note)
    for file in files:
        read = read_file_rows(file)
        yield str(file), read.layout, read.rows


@dataclass
class LoadedData:
    """Records of one dataset path plus what was detected, skipped and warned about."""

    path: str
    records: list[Record] = field(default_factory=list)
    formats: dict[str, Counter] = field(default_factory=dict)  # file → format → rows
    layouts: dict[str, str] = field(default_factory=dict)  # file → "gzip, UTF-8 BOM", …
    skipped: Counter = field(default_factory=Counter)  # reason → rows
    first_skips: dict[str, str] = field(default_factory=dict)  # reason → first skipped row's error
    skips: list[str] = field(default_factory=list)  # every skipped row: "<where>: <why>"
    no_user: list[str] = field(default_factory=list)  # where each row without a user turn is
    notes: list[str] = field(default_factory=list)  # what was left out of a folder

    def describe(self) -> list[str]:
        """``data: chat.jsonl → messages, 3 rows`` lines, one per file, then the warnings."""
        lines = []
        if len(self.formats) > MAX_FILE_LINES:  # a folder of many files: one line for them all
            total: Counter = Counter()
            for counts in self.formats.values():
                total.update(counts)
            kinds = ", ".join(f"{k} {v}" for k, v in total.most_common())
            n = sum(total.values())
            lines.append(f"data: {self.path} ({len(self.formats)} files) → {kinds}, {n} rows")
        for file, counts in list(self.formats.items())[: 0 if lines else None]:
            n = sum(counts.values())
            kinds = ", ".join(counts) if len(counts) == 1 else ", ".join(
                f"{k} {v}" for k, v in counts.most_common()
            )  # fmt: skip
            layout = f" ({self.layouts[file]})" if self.layouts.get(file) else ""
            lines.append(f"data: {Path(file).name}{layout} → {kinds}, {n} row{'s' * (n != 1)}")
        lines += self.notes
        if self.no_user:
            n = len(self.no_user)
            lines.append(
                f"warning: {self.path}: {n} row{'s' * (n != 1)} without a user turn (first: "
                f"{self.no_user[0]}); trained as given"
            )
        if self.skipped:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            lines.append(
                f"data: {self.path}: skipped {sum(self.skipped.values())} bad rows ({why})"
            )
            lines += [f"  first {k}: {self.first_skips[k]}" for k in sorted(self.first_skips)]
        return lines


def load_dataset_records(
    path: str | Path,
    fmt: str = "auto",
    *,
    skip_bad_rows: bool = False,
    columns: str | list[str] | None = None,
) -> LoadedData:
    """Read and convert every row of a dataset file or folder (see the module docstring);
    ``columns`` (``"USER,ASSISTANT[,SYSTEM]"``) names the columns of prompt/response rows."""
    if fmt != "auto" and fmt not in FORMATS:
        raise LongqaError(f"unknown data format '{fmt}'; known: auto, {', '.join(FORMATS)}")
    mapping = parse_columns(columns)
    loaded = LoadedData(str(path))
    for file, layout, rows in iter_source_files(path, loaded.notes):
        if layout:
            loaded.layouts[file] = layout
        for where, row in rows:
            try:
                if isinstance(row, BadRow):
                    raise row
                rec = convert_row(row, fmt, where, columns=mapping)
            except BadRow as err:
                if not skip_bad_rows:
                    raise
                loaded.skipped[err.reason] += 1
                loaded.first_skips.setdefault(err.reason, str(err))
                loaded.skips.append(str(err))
                continue
            loaded.records.append(rec)
            loaded.formats.setdefault(file, Counter())[rec.format] += 1
            if rec.messages is not None and not any(m["role"] == "user" for m in rec.messages):
                loaded.no_user.append(where)
    if not loaded.records:
        if loaded.skips:
            n = len(loaded.skips)
            raise LongqaError(
                f"{path}: no usable samples: {'all ' if n > 1 else ''}{n} row{'s' * (n != 1)} "
                f"skipped (first: {loaded.skips[0]})"
            )
        raise LongqaError(f"{path}: dataset is empty (no usable samples)")
    return loaded


def load_records(path: str | Path, fmt: str = "auto") -> list[Record]:
    """Every record of a dataset path; the first bad row raises (see :func:`load_dataset_records`)."""
    return load_dataset_records(path, fmt).records
