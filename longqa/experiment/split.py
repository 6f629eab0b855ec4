"""Train/eval split of a corpus by source file (seeded), and the guard that keeps them disjoint.

Usage::

    split = split_corpus(Path("essays/"), eval_fraction=0.5, seed=0, min_files=4, source="x.yaml")
    materialize(split, out / "split")               # out/split/train/*, out/split/eval/*
    check_disjoint(train_dir, {"mdqa.jsonl": ["para", ...]}, source="x.yaml")

Whole files go to one side, but essays repeat paragraphs (and near-copies of them) across files, so
before any eval set is built :func:`clean_eval_side` removes from the held-out files every
paragraph that also occurs in a training file (normalised text) or shares at least
``NEAR_SHARE`` of its ``SHINGLE``-word shingles with the training files, and counts them. The
guard, :func:`check_disjoint`, then re-checks only the texts that are evaluated, by the same two
rules, and raises if one slipped through.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from longqa.core.errors import LongqaError

TEXT_EXTS = {".txt", ".md", ".markdown", ".jsonl", ".json", ".parquet"}


@dataclass
class CorpusSplit:
    root: Path
    train: list[Path]
    eval: list[Path]

    def as_json(self) -> dict[str, list[str]]:
        rel = lambda ps: [str(p.relative_to(self.root)) for p in ps]  # noqa: E731
        return {"root": [str(self.root)], "train": rel(self.train), "eval": rel(self.eval)}


def source_files(root: Path) -> list[Path]:
    """The corpus's source files, sorted (a single file counts as one)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_EXTS)


def split_corpus(
    root: Path, *, eval_fraction: float, seed: int, min_files: int, source: str
) -> CorpusSplit:
    """Shuffle the source files with ``seed`` and hold out ``eval_fraction`` of them."""
    files = source_files(root)
    if len(files) < min_files:
        raise LongqaError(
            f"{source}: field 'corpus': {root} has {len(files)} source file(s); the train/eval "
            f"split needs at least {min_files} (split.min_files)"
        )
    order = files[:]
    random.Random(f"split:{seed}").shuffle(order)
    n_eval = min(len(files) - 1, max(1, round(len(files) * eval_fraction)))
    root = root if root.is_dir() else root.parent
    return CorpusSplit(root, sorted(order[n_eval:]), sorted(order[:n_eval]))


def materialize(split: CorpusSplit, out: Path) -> tuple[Path, Path]:
    """Copy each side's files under ``out/train`` and ``out/eval`` (keeping relative paths)."""
    dirs = []
    for side, files in (("train", split.train), ("eval", split.eval)):
        folder = out / side
        if folder.exists():
            shutil.rmtree(folder)
        for f in files:
            dest = folder / f.relative_to(split.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        dirs.append(folder)
    return dirs[0], dirs[1]


def _key(text: str) -> str:
    return hashlib.sha1(" ".join(re.findall(r"\w+", text.lower())).encode()).hexdigest()


def paragraph_keys(folder: Path, min_words: int = 12) -> dict[str, str]:
    """Hash of every paragraph (≥ ``min_words`` words) of the text files under ``folder`` → file."""
    keys: dict[str, str] = {}
    for f in source_files(folder):
        for para in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            if len(para.split()) >= min_words:
                keys.setdefault(_key(para), str(f))
    return keys


SHINGLE, NEAR_SHARE = 8, 0.5


def shingles(text: str, n: int = SHINGLE) -> set[tuple[str, ...]]:
    """The set of ``n``-word runs of ``text`` (lower-cased word tokens)."""
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def train_shingles(folder: Path) -> dict[tuple[str, ...], str]:
    """Every ``SHINGLE``-word run of the text files under ``folder`` → the file it comes from."""
    out: dict[tuple[str, ...], str] = {}
    for f in source_files(folder):
        for g in shingles(f.read_text(encoding="utf-8", errors="replace")):
            out.setdefault(g, str(f))
    return out


def near_copy(text: str, grams: dict[tuple[str, ...], str]) -> str | None:
    """The training file ``text`` nearly copies (≥ ``NEAR_SHARE`` of its shingles), or None."""
    own = shingles(text)
    hits = [grams[g] for g in own if g in grams]
    return hits[0] if own and len(hits) >= NEAR_SHARE * len(own) else None


def clean_eval_side(train: Path, eval_dir: Path, *, min_words: int = 12) -> dict[str, int]:
    """Drop from the held-out text files every paragraph found in (or nearly copying) the
    training files, then every remaining sentence that shares a ``SHINGLE``-word run with them
    (boilerplate such as "Thanks to … for reading drafts of this": the builders cut documents
    of a few sentences, and such a piece would copy the training side); rewrite the files in
    place; the counts (paragraphs kept, exact, near, sentences, files)."""
    keys, grams = paragraph_keys(train, min_words), train_shingles(train)
    counts = {"paragraphs": 0, "exact": 0, "near": 0, "sentences": 0, "files": 0}
    for f in source_files(eval_dir):
        paras = re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace"))
        kept, dropped = [], 0
        for para in paras:
            if len(para.split()) >= min_words and _key(para) in keys:
                counts["exact"] += 1
                dropped += 1
                continue
            if near_copy(para, grams):
                counts["near"] += 1
                dropped += 1
                continue
            sentences = re.split(r"(?<=[.!?])\s+", para)
            own = [s for s in sentences if not any(g in grams for g in shingles(s))]
            counts["sentences"] += len(sentences) - len(own)
            dropped += len(sentences) - len(own)
            if own:
                kept.append(para if len(own) == len(sentences) else " ".join(own))
                counts["paragraphs"] += bool(para.strip())
        if dropped:  # a file with nothing removed is left as it is, separators and all
            counts["files"] += 1
            f.write_text("\n\n".join(kept), encoding="utf-8")
    return counts


def check_disjoint(train: Path, eval_sets: dict[str, list[str]], *, min_words: int = 12) -> None:
    """Raise when a paragraph of an eval set also occurs in (or nearly copies) the training files.

    ``eval_sets`` maps ``"file: field"`` to the texts to check (each split into paragraphs)."""
    keys, grams = paragraph_keys(train, min_words), train_shingles(train)
    for where, texts in eval_sets.items():
        for text in texts:
            for para in re.split(r"\n\s*\n", text):
                hit = keys.get(_key(para)) if len(para.split()) >= min_words else None
                hit = hit or near_copy(para, grams)
                if hit:
                    raise LongqaError(
                        f"{where}: an eval text overlaps the training documents "
                        f"(a paragraph of {hit}); evaluation must use held-out documents"
                    )
