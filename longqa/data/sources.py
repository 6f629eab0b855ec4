"""Read a dataset path in any supported file layout into records, saying what was detected.

Usage::

    from longqa.data.sources import load_dataset_records
    loaded = load_dataset_records("chat.jsonl", fmt="auto", skip_bad_rows=False)
    loaded.records, loaded.describe()        # [...], ["data: chat.jsonl → messages, 3 rows"]

Paths: a file or a folder (searched recursively, hidden files and ``stats.json`` left out).

* ``.jsonl`` — one JSON object per line; ``.json`` — a JSON array of objects, one object, or JSONL;
* ``.txt`` / ``.md`` / ``.markdown`` — one document per file (pretraining text); a folder holding
  JSON/JSONL/Parquet files reads those and ignores its text files (e.g. a dataset card);
* ``.parquet`` — one row per table row;
* ``.gz`` / ``.zst`` after any of the above (``data.jsonl.zst``) — decompressed on the fly;
* a ``datasets`` folder written by ``save_to_disk`` (the ``train`` split of a ``DatasetDict``, or
  every split when it has none), or a local ``load_dataset``-style folder (a ``README.md`` whose
  YAML header declares ``configs:``, or CSV files) read with ``datasets.load_dataset``.

Each row goes through :func:`longqa.data.formats.convert_row`. A bad row (not JSON, unknown role,
empty conversation, no assistant turn, …) raises its one-line :class:`BadRow`, or with
``skip_bad_rows`` is skipped and counted by reason in ``loaded.skipped``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.formats import FORMATS, BadRow, Record, convert_row

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
ROW_SUFFIXES = {".jsonl", ".json", ".parquet"}
COMPRESSED = {".gz", ".zst"}


def _suffix(file: Path) -> str:
    """The data suffix under any compression suffix: ``a.jsonl.zst`` → ``.jsonl``."""
    parts = [s.lower() for s in file.suffixes]
    while parts and parts[-1] in COMPRESSED:
        parts.pop()
    return parts[-1] if parts else ""


def read_bytes(file: Path) -> bytes:
    """A file's bytes, decompressed when it ends in ``.gz`` or ``.zst``."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".gz":
            with gzip.open(file, "rb") as fh:
                return fh.read()
        if suffix == ".zst":
            import zstandard

            with open(file, "rb") as raw:
                return zstandard.ZstdDecompressor().stream_reader(raw).read()
    except (OSError, EOFError) as exc:
        raise LongqaError(f"{file}: cannot decompress ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError is not an OSError
        raise LongqaError(f"{file}: cannot decompress ({exc.__class__.__name__}: {exc})") from None
    return file.read_bytes()


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return any(
        (path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _is_hub_style_folder(path: Path) -> bool:
    card = path / "README.md"
    if card.is_file():
        head = card.read_text(encoding="utf-8", errors="replace")
        if head.startswith("---") and "\nconfigs:" in head.split("\n---", 1)[0]:
            return True
    return any(path.rglob("*.csv"))


def dataset_files(path: Path) -> list[Path]:
    """The data files of a folder: its row files, else its text files (sorted)."""
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and not f.name.startswith(".") and f.name != "stats.json"
    )
    rows = [f for f in files if _suffix(f) in ROW_SUFFIXES]
    texts = [f for f in files if _suffix(f) in TEXT_SUFFIXES]
    if not rows and not texts:
        known = ", ".join(sorted(ROW_SUFFIXES | TEXT_SUFFIXES))
        raise LongqaError(f"{path}: no data files in this folder (expected {known}, or .gz/.zst)")
    return rows or texts


def _not_utf8(where: str, exc: UnicodeDecodeError) -> BadRow:
    return BadRow(where, None, f"not UTF-8 ({exc.reason} at byte {exc.start})", "bad_line")


def _json_rows(file: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    stripped = data.lstrip()
    if _suffix(file) == ".json" and stripped[:1] in (b"[", b"{"):
        try:
            whole = json.loads(data)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise LongqaError(str(_not_utf8(f"{file}:{line}", exc))) from None
        except json.JSONDecodeError as exc:
            if stripped[:1] == b"[":
                raise LongqaError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        else:
            items = whole if isinstance(whole, list) else [whole]
            for i, row in enumerate(items, 1):
                yield f"{file}: item {i}", row
            return
    for lineno, raw in enumerate(data.split(b"\n"), 1):  # not splitlines: U+2028 is valid JSON
        if not raw.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            yield where, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield where, _not_utf8(where, exc)
        except json.JSONDecodeError as exc:
            yield where, BadRow(where, None, f"invalid JSON ({exc.msg})", "bad_line")


def _table_rows(label: str, rows: Any) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows, 1):
        yield f"{label}: row {i}", {k: v for k, v in dict(row).items() if v is not None}


def _file_rows(file: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row or BadRow)`` for every row of one file."""
    kind = _suffix(file)
    if kind in TEXT_SUFFIXES:
        data = read_bytes(file)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            yield str(file), _not_utf8(f"{file}:{line}", exc)
            return
        if text.strip():
            yield str(file), {"text": text}
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(read_bytes(file)))
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise LongqaError(f"{file}: unreadable Parquet ({exc.__class__.__name__})") from None
        yield from _table_rows(str(file), table.to_pylist())
    elif kind in (".jsonl", ".json"):
        yield from _json_rows(file, read_bytes(file))
    else:
        raise LongqaError(
            f"{file}: unsupported data file (expected .jsonl, .json, .txt, .md, .parquet)"
        )


def _datasets_folder_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    if is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(str(path))
    if isinstance(ds, datasets.DatasetDict):
        for split in ["train"] if "train" in ds else list(ds):
            yield from _table_rows(f"{path}[{split}]", ds[split])
    else:
        yield from _table_rows(str(path), ds)


def iter_source_rows(path: str | Path) -> Iterator[tuple[str, str, Any]]:
    """``(file label, where, row or BadRow)`` for every row under ``path`` (in file order)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LongqaError(f"dataset not found: {p}")
    if p.is_dir() and (is_saved_dataset(p) or _is_hub_style_folder(p)):
        for where, row in _datasets_folder_rows(p):
            yield str(p), where, row
        return
    for file in [p] if p.is_file() else dataset_files(p):
        for where, row in _file_rows(file):
            yield str(file), where, row


@dataclass
class LoadedData:
    """Records of one dataset path plus what was detected and skipped."""

    path: str
    records: list[Record] = field(default_factory=list)
    formats: dict[str, Counter] = field(default_factory=dict)  # file → format → rows
    skipped: Counter = field(default_factory=Counter)  # reason → rows
    first_skip: str = ""  # the first skipped row's message

    def describe(self) -> list[str]:
        """``data: chat.jsonl → messages, 3 rows`` lines, one per file."""
        lines = []
        for file, counts in self.formats.items():
            n = sum(counts.values())
            kinds = ", ".join(counts) if len(counts) == 1 else ", ".join(
                f"{k} {v}" for k, v in counts.most_common()
            )  # fmt: skip
            lines.append(f"data: {Path(file).name} → {kinds}, {n} row{'s' * (n != 1)}")
        if self.skipped:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            lines.append(
                f"data: {self.path}: skipped {sum(self.skipped.values())} bad rows ({why})"
            )
        return lines


def load_dataset_records(
    path: str | Path, fmt: str = "auto", *, skip_bad_rows: bool = False
) -> LoadedData:
    """Read and convert every row of a dataset file or folder (see the module docstring)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise LongqaError(f"unknown data format '{fmt}'; known: auto, {', '.join(FORMATS)}")
    loaded = LoadedData(str(path))
    for file, where, row in iter_source_rows(path):
        try:
            if isinstance(row, BadRow):
                raise row
            rec = convert_row(row, fmt, where)
        except BadRow as err:
            if not skip_bad_rows:
                raise
            loaded.skipped[err.reason] += 1
            loaded.first_skip = loaded.first_skip or str(err)
            continue
        loaded.records.append(rec)
        loaded.formats.setdefault(file, Counter())[rec.format] += 1
    if not loaded.records:
        raise LongqaError(f"{path}: dataset is empty (no usable samples)")
    return loaded


def load_records(path: str | Path, fmt: str = "auto") -> list[Record]:
    """Every record of a dataset path; the first bad row raises (see :func:`load_dataset_records`)."""
    return load_dataset_records(path, fmt).records
