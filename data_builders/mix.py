"""The final training mixture: builder outputs plus outside sets (``--task mix``).

Inputs (``--inputs``, repeatable or comma-separated): each ``NAME=PATH`` or just ``PATH`` (the name
is then the file/folder stem). A path is a builder output folder (its ``*.jsonl`` shards), a
``.jsonl`` file or a ``.json`` array. Every record is converted to the sample schema, detecting the
format per record:

* longqa samples (``messages`` or ``text`` plus ``id``/``task``) are kept as they are;
* ShareGPT-style ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` (long
  conversations), ``{"messages": [{"role", "content"}]}`` rows (OpenAI fine-tuning files too) and
  ``{"text": ...}`` documents;
* Alpaca-style ``{"instruction", "input", "output"}`` (short instructions).

The conversion is ``longqa.data.formats`` (the same as ``longqa train --data``).

How many records each source contributes: ``--counts`` (one per input; the paper used ~20K long
samples + 1000 short + 1000 long conversations) or ``--ratios`` (one per input, normalised, with
``--total``; without a total the largest mixture that needs no repeats). A source asked for more than
it holds is an error unless ``replace=true`` (then records repeat). The selection and the final
order are shuffled with ``--seed`` (same seed, same inputs → byte-identical output).

Malformed input: a line that is not JSON, or a record of no known format, or one without an
assistant answer, is skipped and counted per source in stats.json (``skipped``) and in the card;
``strict=true`` fails on it with file and line instead. An empty input file contributes nothing
(counted as ``empty_files``). Output: JSONL shards, ``stats.json`` and the dataset card ``README.md``
(sources, counts, length and language histograms).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_builders.text import count_words, detect_lang
from longqa.core.errors import LongqaError
from longqa.data.formats import BadRow, convert_row

TASK = "mix"


class Options(BaseModel):
    """Flags of ``longqa build-data --task mix``."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1, description="NAME=PATH or PATH, one per source")
    out: Path
    counts: list[int] | None = Field(None, description="records per source, in --inputs order")
    ratios: list[float] | None = Field(None, description="share per source, in --inputs order")
    total: int | None = Field(None, gt=0, description="mixture size with --ratios")
    replace: bool = False
    seed: int = 0
    strict: bool = False
    shard_size: int = Field(1000, gt=0)
    length_bins: int = Field(10, gt=0)

    @field_validator("counts", "ratios", "inputs", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``"a,b"`` (a single flag value) → ``["a", "b"]``."""
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, (list, tuple)) and all(isinstance(p, str) for p in v):
            return [q.strip() for p in v for q in p.split(",") if q.strip()]
        return v

    @model_validator(mode="after")
    def _check(self) -> Options:
        if self.counts is not None and self.ratios is not None:
            raise ValueError("give --counts or --ratios, not both")
        for name, values in (("counts", self.counts), ("ratios", self.ratios)):
            if values is not None:
                if len(values) != len(self.inputs):
                    raise ValueError(
                        f"--{name} has {len(values)} values for {len(self.inputs)} inputs"
                    )
                if any(v < 0 for v in values):
                    raise ValueError(f"--{name} values must be >= 0")
        if self.ratios is not None and sum(self.ratios) <= 0:
            raise ValueError("--ratios must not all be 0")
        return self


# ----------------------------------------------------------------------------- reading records


def input_files(path: Path) -> list[Path]:
    """The record files of one input: the file itself, or a folder's ``*.jsonl`` (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if not p.name.startswith("."))
        if not files:
            files = sorted(p for p in path.rglob("*.json") if p.name != "stats.json")
        if not files:
            raise LongqaError(f"{path}: no .jsonl or .json files in this folder")
        return files
    raise LongqaError(f"input not found: {path}")


def iter_records(
    path: Path, counts: Counter, strict: bool = False
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(file, line, record)`` for every JSON object in a JSONL file or a ``.json`` array.

    A line that is not a JSON object is counted in ``counts["bad_line"]`` and skipped, or raises
    (``strict``) naming file and line. An empty file is counted in ``counts["empty_files"]``.
    """
    for file, line, _, rec in _iter_located(path, counts, strict):
        yield file, line, rec


def _iter_located(
    path: Path, counts: Counter, strict: bool
) -> Iterator[tuple[str, int, int | None, dict[str, Any]]]:
    """Like :func:`iter_records` plus the byte offset of each JSONL line (None in a JSON array)."""
    for file in input_files(path):
        data = file.read_bytes()
        if not data.strip():
            counts["empty_files"] += 1
            continue
        if file.suffix == ".json" and data.lstrip().startswith(b"["):
            try:
                rows = json.loads(data)
            except json.JSONDecodeError as exc:
                raise LongqaError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
            for i, row in enumerate(rows, 1):
                if isinstance(row, dict):
                    yield str(file), i, None, row
                elif strict:
                    raise LongqaError(f"{file}: item {i}: expected a JSON object")
                else:
                    counts["bad_line"] += 1
            continue
        offset = 0
        for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if strict:
                    raise LongqaError(f"{file}:{lineno}: invalid JSON ({exc})") from None
                counts["bad_line"] += 1
                continue
            if not isinstance(row, dict):
                if strict:
                    raise LongqaError(f"{file}:{lineno}: expected a JSON object")
                counts["bad_line"] += 1
                continue
            yield str(file), lineno, start, row


# ----------------------------------------------------------------------------- conversion


def convert(rec: dict[str, Any], source: str) -> tuple[dict[str, Any] | None, str]:
    """``(sample, format)`` for a record of any supported format, or ``(None, reject_reason)``.

    Rows are read by :func:`longqa.data.formats.convert_row` (the converter training uses too);
    a builder's sample (``id`` + ``task``) keeps its task and meta, anything else becomes a sample
    of task ``source`` whose trailing unanswered turns are dropped."""
    try:
        r = convert_row(rec, "auto")
    except BadRow as err:
        return None, err.reason
    if r.task is not None and "id" in rec:
        sample = {"id": r.id, "task": r.task, "lang": r.lang or "en"}
        sample["text" if r.text is not None else "messages"] = r.text or r.messages
        return {**sample, "meta": {**r.meta, "source_id": r.id}}, "longqa"
    if r.text is not None:
        return {"task": source, "lang": detect_lang(r.text), "text": r.text, "meta": {}}, r.format
    messages = [{"role": m["role"], "content": m["content"]} for m in r.messages or []]
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a trailing question without an answer teaches nothing
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return None, "no_answer"
    lang = detect_lang("\n".join(m["content"] for m in messages))
    meta = {} if r.format == "alpaca" else {"source_id": rec.get("id")}
    return {"task": source, "lang": lang, "messages": messages, "meta": meta}, r.format


# ----------------------------------------------------------------------------- mixing


def parse_inputs(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` / ``PATH`` items (commas also separate) → unique ``(name, path)`` pairs."""
    out: list[tuple[str, Path]] = []
    for spec in (s.strip() for item in specs for s in item.split(",")):
        if not spec:
            continue
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = name, Path(name).stem
        name = name.strip()
        if not name or any(name == n for n, _ in out):
            raise LongqaError(f"--inputs: source name '{name}' is empty or repeated")
        out.append((name, Path(path.strip())))
    return out


def apportion(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to ``weights`` that sum to ``total`` (largest remainder method)."""
    norm = sum(weights)
    exact = [total * w / norm for w in weights]
    base = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def plan_counts(options: Options, available: list[int], names: list[str]) -> list[int]:
    """How many records each source contributes (see the module docstring)."""
    if options.counts is not None:
        wanted = list(options.counts)
    elif options.ratios is not None:
        total = options.total
        if total is None:
            total = int(min(a / r for a, r in zip(available, options.ratios, strict=True) if r > 0))
        wanted = apportion(total, options.ratios)
    else:
        wanted = list(available)
    for name, want, have in zip(names, wanted, available, strict=True):
        if want > have and (not options.replace or have == 0):
            raise LongqaError(
                f"--inputs: source '{name}' has {have} usable records but {want} were asked; "
                "lower --counts/--ratios/--total or set replace=true"
            )
    return wanted


def choose(n_available: int, want: int, rng: random.Random) -> list[int]:
    """``want`` record indices: whole copies of the source, then a random subset without repeats."""
    full, rest = divmod(want, n_available) if n_available else (0, 0)
    picks = list(range(n_available)) * full + rng.sample(range(n_available), rest)
    return sorted(picks)


def _load(file: str, offset: int | None, line: int, cache: dict) -> dict[str, Any]:
    if offset is None:
        if file not in cache:
            cache[file] = json.loads(Path(file).read_bytes())
        return cache[file][line - 1]
    with open(file, "rb") as fh:
        fh.seek(offset)
        return json.loads(fh.readline())


def build(options: Options) -> dict:
    """Write the shuffled mixture, stats.json and README.md (the dataset card) to ``options.out``."""
    from data_builders.dataset_card import render_card
    from data_builders.writer import ShardWriter, length_histogram, write_stats
    from longqa.core.paths import atomic_write_text

    sources = parse_inputs(options.inputs)
    rng = random.Random(options.seed)
    located: list[list[tuple[str, int, int | None]]] = []
    reports: list[dict[str, Any]] = []
    for name, path in sources:
        counts: Counter = Counter()
        formats: Counter = Counter()
        keep = []
        for file, line, offset, rec in _iter_located(path, counts, options.strict):
            sample, fmt = convert(rec, name)
            if sample is None:
                if options.strict:
                    raise LongqaError(f"{file}:{line}: unusable record ({fmt})")
                counts[fmt] += 1
                continue
            formats[fmt] += 1
            keep.append((file, line, offset))
        located.append(keep)
        empty = counts.pop("empty_files", 0)
        reports.append(
            {
                "name": name,
                "path": str(path),
                "available": len(keep),
                "formats": dict(formats),
                "skipped": dict(sorted(counts.items())),
                "empty_files": empty,
            }
        )
    wanted = plan_counts(options, [len(k) for k in located], [n for n, _ in sources])
    order: list[tuple[int, int, int]] = []  # (source, record index, copy number)
    for s, (keep, want) in enumerate(zip(located, wanted, strict=True)):
        seen: Counter = Counter()
        for idx in choose(len(keep), want, rng):
            order.append((s, idx, seen[idx]))
            seen[idx] += 1
        reports[s]["selected"] = want
    rng.shuffle(order)

    lengths: list[int] = []
    langs: Counter = Counter()
    tasks: Counter = Counter()
    cache: dict = {}
    options.out.mkdir(parents=True, exist_ok=True)
    for old in [*ShardWriter(options.out).shards(), options.out / ".data.partial.jsonl"]:
        old.unlink(missing_ok=True)  # a mixture is rewritten whole: same seed, same file
    with ShardWriter(options.out, shard_size=options.shard_size) as writer:
        for s, idx, copy in order:
            name = sources[s][0]
            file, line, offset = located[s][idx]
            sample, _ = convert(_load(file, offset, line, cache), name)
            assert sample is not None
            sample["id"] = f"{name}-{idx:07d}" + (f"-r{copy}" if copy else "")
            sample["meta"] = {**sample.get("meta", {}), "mix_source": name}
            writer.write(sample)
            text = sample.get("text") or "\n".join(m["content"] for m in sample["messages"])
            lengths.append(count_words(text))
            langs[sample["lang"]] += 1
            tasks[sample["task"]] += 1
    stats = {
        "task": TASK,
        "seed": options.seed,
        "samples": len(order),
        "sources": reports,
        "tasks": dict(sorted(tasks.items())),
        "languages": dict(sorted(langs.items())),
        "length_unit": "words; a CJK character counts as one",
        "length_histogram": length_histogram(lengths, options.length_bins),
    }
    write_stats(options.out, stats)
    atomic_write_text(options.out / "README.md", render_card(stats))
    return stats
