"""Offline, deterministic word lists and random needles (keys, values) for the RULER tasks.

RULER draws words from the ``wonderwords`` lists (adjective-noun keys such as ``wacky-clothing``,
English words for common-words extraction); nothing here is downloaded. Words come from the
vocabulary of a local corpus (the shared essays when present), extended by pronounceable
pseudo-words generated from a fixed syllable table, so the pool is the same on every machine that
has the same corpus (the run settings record the folder). Values follow RULER: 7-digit numbers, version-4 UUIDs from a seeded RNG.

Usage::

    from longqa.eval.ruler.words import word_pool, random_needle
    words = word_pool("../shared/corpora/paul_graham_essays")   # distinct, lower-case
    rng = random.Random("seed")
    random_needle(rng, "words", words)     # 'quiet-harbor'
"""

from __future__ import annotations

import random
import re
import uuid
from functools import lru_cache
from pathlib import Path

from longqa.core.errors import LongqaError

NEEDLE_TYPES = ("numbers", "words", "uuids")
_ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl sh st tr".split()
_VOWELS = "a e i o u ai ea oo ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "t", "m", "nd", "st"]


def _pseudo_words() -> list[str]:
    """Pronounceable two-syllable words from a fixed table (deterministic, ~270k of them)."""
    first = [o + v for o in _ONSETS for v in _VOWELS]
    second = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    return [a + b for a in first for b in second]


def corpus_vocabulary(folder: str | Path, min_len: int = 4, max_len: int = 12) -> list[str]:
    """Distinct lower-case alphabetic words of ``min_len``–``max_len`` letters in a text folder."""
    words: set[str] = set()
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix in (".txt", ".md") and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            words.update(w for w in re.findall(r"\b[a-z]+\b", text) if min_len <= len(w) <= max_len)
    return sorted(words)


@lru_cache(maxsize=8)
def word_pool(folder: str | None = None, size: int = 2000) -> tuple[str, ...]:
    """At least ``size`` distinct words: the vocabulary of the text ``folder`` (none: no corpus),
    topped up with pseudo-words when it has fewer; each part shuffled with a fixed seed."""
    real = corpus_vocabulary(folder) if folder else []
    random.Random(0).shuffle(real)
    if len(real) >= size:
        return tuple(real)
    have = set(real)
    extra = [w for w in _pseudo_words() if w not in have]
    random.Random(1).shuffle(extra)
    pool = real + extra[: size - len(real)]
    if len(pool) < size:
        raise LongqaError(f"word pool: only {len(pool)} words available ({size} asked)")
    return tuple(pool)


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_key_word(rng: random.Random, words: tuple[str, ...] | list[str]) -> str:
    """A two-word key like RULER's adjective-noun pairs (``quiet-harbor``)."""
    return f"{rng.choice(words)}-{rng.choice(words)}"


def random_needle(rng: random.Random, kind: str, words: tuple[str, ...] | list[str]) -> str:
    """A random key or value of ``kind`` (numbers, words, uuids)."""
    if kind == "numbers":
        return random_number(rng)
    if kind == "words":
        return random_key_word(rng, words)
    if kind == "uuids":
        return random_uuid(rng)
    raise LongqaError(f"needle type '{kind}' unknown; expected one of {', '.join(NEEDLE_TYPES)}")


def distinct_needles(
    rng: random.Random, kind: str, n: int, words: tuple[str, ...] | list[str], avoid: set[str]
) -> list[str]:
    """``n`` random needles of ``kind``, distinct from each other and from ``avoid``."""
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        x = random_needle(rng, kind, words)
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
