"""One data file → rows, read the way other tools write files: compression found by its magic bytes,
a UTF-8 byte-order mark dropped, CSV/TSV tables read by their header.

Usage::

    from longqa.data.files import read_file_rows, data_kind
    read = read_file_rows(Path("chat.jsonl"))
    read.layout, list(read.rows)              # "gzip, UTF-8 BOM", [("chat.jsonl:1", {...}), …]

* compression: gzip (``1f 8b``), zstd (``28 b5 2f fd``), bzip2 (``BZh``) and xz (``fd 37 7a 58 5a 00``)
  are recognised by their first bytes whatever the file is called (``chat.jsonl`` that is really
  gzip is read); ``.gz``/``.zst``/``.bz2``/``.xz`` after a data suffix name the inner kind
  (``chat.jsonl.zst`` → ``.jsonl``). A zip archive or UTF-16 text is refused in one line.
* ``.jsonl`` — one JSON object per line; ``.json`` — a JSON array of objects, one object, or JSONL;
* ``.csv`` / ``.tsv`` — a header row, then one row per record (quoted fields may span lines);
* ``.txt`` / ``.md`` / ``.markdown`` — the whole file is one document;
* ``.parquet`` — one row per table row (``PAR1`` files are read as Parquet whatever their name).

Each row is yielded as ``(where, row)`` with ``where`` = ``file:line`` (``file: item N`` in a JSON
array, ``file: row N`` in Parquet); a row that cannot be read is yielded as a
:class:`~longqa.data.formats.BadRow` in its place, so ``--skip-bad-rows`` can count it. A file that
cannot be read at all raises a one-line :class:`~longqa.core.errors.LongqaError` naming it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.bad_rows import BadRow

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
TABLE_SUFFIXES = {".csv", ".tsv"}
ROW_SUFFIXES = {".jsonl", ".json", ".parquet"} | TABLE_SUFFIXES
COMPRESSED = {".gz", ".zst", ".bz2", ".xz"}
BOM = b"\xef\xbb\xbf"

# (magic bytes, name, decompress) — https://en.wikipedia.org/wiki/List_of_file_signatures
_MAGIC = (
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"\x28\xb5\x2f\xfd", "zstd", None),  # zstandard, imported when needed
    (b"BZh", "bzip2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
)


def data_kind(file: Path) -> str:
    """The data suffix under any compression suffix: ``a.jsonl.zst`` → ``.jsonl``."""
    parts = [s.lower() for s in file.suffixes]
    while parts and parts[-1] in COMPRESSED:
        parts.pop()
    return parts[-1] if parts else ""


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


def read_bytes(file: Path) -> tuple[bytes, list[str]]:
    """A file's bytes, decompressed when its first bytes say it is compressed (however many
    times), and the notes on what was found (``["gzip"]``)."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise LongqaError(f"{file}: cannot read ({exc.strerror or exc})") from None
    notes: list[str] = []
    for _ in range(4):
        for magic, name, unpack in _MAGIC:
            if data.startswith(magic):
                try:
                    data = (unpack or _zstd)(data)
                except Exception as exc:  # every codec has its own error types
                    why = f"{exc.__class__.__name__}: {exc}"
                    raise LongqaError(
                        f"{file}: {name} data that cannot be decompressed ({why})"
                    ) from None
                notes.append(name)
                break
        else:
            break
    if data.startswith(b"PK\x03\x04"):
        raise LongqaError(f"{file}: a zip archive; unpack it and point --data at the files inside")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LongqaError(f"{file}: UTF-16 text; save it as UTF-8")
    if data.startswith(BOM):
        data = data[len(BOM) :]
        notes.append("UTF-8 BOM")
    return data, notes


@dataclass
class FileRows:
    """The rows of one file and how the file was laid out (compression, BOM, columns)."""

    file: Path
    rows: Iterator[tuple[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return ", ".join(self.notes)


def read_file_rows(file: Path) -> FileRows:
    """``(where, row or BadRow)`` for every row of one file (see the module docstring)."""
    kind = data_kind(file)
    if kind not in ROW_SUFFIXES | TEXT_SUFFIXES:
        known = ", ".join(sorted(ROW_SUFFIXES | TEXT_SUFFIXES))
        raise LongqaError(f"{file}: unsupported data file (expected {known}, or .gz/.zst of them)")
    data, notes = read_bytes(file)
    if data.startswith(b"PAR1"):
        kind = ".parquet"
    if kind == ".parquet":
        return FileRows(file, _parquet_rows(file, data), notes)
    if kind in TABLE_SUFFIXES:
        return FileRows(file, _table_rows(file, data, "\t" if kind == ".tsv" else ","), notes)
    if kind in TEXT_SUFFIXES:
        return FileRows(file, _text_rows(file, data), notes)
    return FileRows(file, _json_rows(file, data, kind), notes)


def _not_utf8(where: str, exc: UnicodeDecodeError) -> BadRow:
    return BadRow(where, None, f"not UTF-8 ({exc.reason} at byte {exc.start})", "bad_line")


def _decode(file: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LongqaError(str(_not_utf8(f"{file}:{line}", exc))) from None


def _text_rows(file: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield str(file), _not_utf8(f"{file}:{line}", exc)
        return
    if text.strip():
        yield str(file), {"text": text}


def _json_rows(file: Path, data: bytes, kind: str) -> Iterator[tuple[str, Any]]:
    stripped = data.lstrip()
    if kind == ".json" and stripped[:1] in (b"[", b"{"):
        try:
            whole = json.loads(_decode(file, data))
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


def drop_nulls(value: Any) -> Any:
    """Nested dicts/lists without ``None`` dict values (Parquet structs carry every key of every
    row, absent ones as null)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def table_rows(label: str, rows: Any) -> Iterator[tuple[str, Any]]:
    """``(label: row N, row)`` for the rows of a Parquet table or a ``datasets`` split."""
    for i, row in enumerate(rows, 1):
        yield f"{label}: row {i}", drop_nulls(dict(row))


def _parquet_rows(file: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise LongqaError(f"{file}: unreadable Parquet ({exc.__class__.__name__})") from None
    yield from table_rows(str(file), table.to_pylist())


def _table_rows(file: Path, data: bytes, delimiter: str) -> Iterator[tuple[str, Any]]:
    """CSV/TSV rows as ``{column: value}`` (empty cells left out), ``where`` = the row's first line."""
    csv.field_size_limit(
        min(sys.maxsize, 2**31 - 1)
    )  # long-context cells exceed the 128 KiB default
    reader = csv.reader(io.StringIO(_decode(file, data), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise LongqaError(f"{file}:1: unreadable header ({exc})") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise LongqaError(f"{file}:1: the first line must name the columns")
    start = reader.line_num + 1
    while True:
        where = f"{file}:{start}"
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield where, BadRow(where, None, f"unreadable row ({exc})", "bad_line")
            start = reader.line_num + 1
            continue
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            why = f"{len(cells)} cells, the header names {len(header)} columns"
            yield where, BadRow(where, None, why, "bad_line")
            continue
        yield where, {h: c for h, c in zip(header, cells, strict=False) if h and c != ""}
