"""Offline, deterministic question writing: pick a salient sentence span and build a locating question.

Usage::

    span = pick_salient_span(doc_text, rng, lang="en")        # Span(text, start, end) or None
    hint = unique_prefix(span.text, other_texts, lang="en")   # shortest prefix found nowhere else

Used by ``paraphrase-mdqa --generator extractive`` (and reusable by other builders that need
questions without an LLM). The span is an exact substring of the document — one or two consecutive
sentences of a moderate length — chosen for salience: many distinct long words, capitalised names
and numbers, with a seeded random tie-break. Questions quote only the span's opening words (or a
few of its keywords), so answering still requires finding the passage in the long context and
copying it: the W-shaped signal the paraphrasing method is after.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from data_builders.corpus import split_sentences

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+|\d[\d,.]*")
_STOP = set(
    "about above after again against because before being below between could during every "
    "further having other should their there these those through under until where which while "
    "would yourself itself themselves people things something really actually".split()
)


@dataclass
class Span:
    text: str
    start: int
    end: int


def _size(text: str, lang: str) -> int:
    return len(re.sub(r"\s", "", text)) if lang == "zh" else len(text.split())


def _salience(text: str, lang: str) -> float:
    if lang == "zh":
        return len(set(text)) / math.sqrt(max(1, len(text)))
    words = _WORD.findall(text)
    long = {w.lower() for w in words if len(w) >= 6 and w.lower() not in _STOP}
    caps = {w for w in words[1:] if w[0].isupper()}
    nums = {w for w in words if w[0].isdigit()}
    return (len(long) + 1.5 * len(caps) + 2 * len(nums)) / math.sqrt(max(1, len(words)))


def pick_salient_span(
    text: str,
    rng: random.Random,
    *,
    lang: str = "en",
    min_size: int | None = None,
    max_size: int | None = None,
) -> Span | None:
    """The most salient span of 1-2 sentences within the size band (words, or chars for zh)."""
    lo = min_size or (20 if lang == "zh" else 12)
    hi = max_size or (150 if lang == "zh" else 60)
    sents = split_sentences(text)
    offsets: list[tuple[int, int]] = []
    cursor = 0
    for s in sents:
        start = text.find(s, cursor)
        if start < 0:
            return None
        offsets.append((start, start + len(s)))
        cursor = start + len(s)
    best: tuple[float, Span] | None = None
    for i in range(len(sents)):
        for j in (i, i + 1):
            if j >= len(sents):
                continue
            start, end = offsets[i][0], offsets[j][1]
            span = text[start:end]
            if "\n\n" in span or not lo <= _size(span, lang) <= hi:
                continue
            score = _salience(span, lang) + rng.random() * 0.5
            if best is None or score > best[0]:
                best = (score, Span(span, start, end))
    return best[1] if best else None


def unique_prefix(
    span: str, others: Sequence[str], *, lang: str = "en", start_len: int | None = None
) -> str | None:
    """Shortest prefix of ``span`` (from ``start_len`` words/chars up) found in none of ``others``.

    ``None`` when even the whole span occurs elsewhere (a duplicated sentence: ask something else).
    """
    flat = [" ".join(o.split()) for o in others]
    if lang == "zh":
        chars = "".join(span.split())
        pieces = [chars[:k] for k in range(start_len or 8, len(chars) + 1)]
        flat = ["".join(o.split()) for o in others]
    else:
        words = span.split()
        pieces = [
            " ".join(words[:k]) for k in range(min(start_len or 6, len(words)), len(words) + 1)
        ]
    for p in pieces:
        if not any(p in o for o in flat):
            return p.rstrip(",;:")
    return None


def keywords(span: str, rng: random.Random, k: int = 3) -> list[str]:
    """Up to ``k`` salient words of an English span (long words, names, numbers), in text order."""
    words = _WORD.findall(span)
    cands: list[str] = []
    seen: set[str] = set()
    for w in words:
        key = w.strip(".,")
        low = key.lower()
        if "'" in key or low in _STOP or low in seen or not (len(key) >= 7 or key[0].isdigit()):
            continue
        seen.add(low)
        cands.append(key)
    if len(cands) < k:
        return []
    chosen = set(rng.sample(cands, k))
    return [w for w in cands if w in chosen]


_CJK_PAIR = re.compile(r"(?=([\u4e00-\u9fff]{2}))")


def choice_words(text: str, lang: str = "en") -> list[str]:
    """Distinct answer-option words of ``text`` in text order: long non-stop words and numbers
    (English), or two-character CJK strings (Chinese)."""
    if lang == "zh":
        found = _CJK_PAIR.findall(text)
    else:
        found = [w.strip(".,'-") for w in _WORD.findall(text)]
        found = [w for w in found if (len(w) >= 7 or w[:1].isdigit()) and w.lower() not in _STOP]
    return list(dict.fromkeys(found))
