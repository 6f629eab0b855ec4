"""Haystacks for the RULER tasks and needle insertion at sentence boundaries.

Three haystack kinds, as in RULER's ``niah.py``: ``noise`` (the passkey filler paragraph repeated,
one paragraph per line), ``essay`` (the first ``n`` words of a text corpus, cycled when short,
split into sentences) and ``needle`` (lines that are themselves needles with other keys/values,
built by the niah generator). Needles go between whole sentences or lines, never inside one; the
builders return the context and the character span of every inserted needle.

Usage::

    from longqa.eval.ruler.haystack import essay_context, line_context, NOISE
    context, spans = line_context([NOISE] * 40, ["The code is 42."], rng)
    context[spans[0][0]:spans[0][1]] == "The code is 42."
"""

from __future__ import annotations

import random
import re
from itertools import cycle, islice
from pathlib import Path

from longqa.core.errors import LongqaError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# RULER samples needle depths from 40 evenly spaced percentages of the haystack.
DEPTHS = [round(i * 100 / 39) for i in range(40)]
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=\S)")


def load_essay_words(folder: str | Path) -> list[str]:
    """All ``.txt``/``.md`` files under ``folder`` (sorted), whitespace-normalised, as words."""
    from longqa.eval.needle import load_haystack

    words = re.sub(r"\s+", " ", load_haystack(folder)).strip().split(" ")
    if len(words) < 50:
        raise LongqaError(f"{folder}: haystack corpus too small ({len(words)} words)")
    return words


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by white space."""
    return [s for s in _SENTENCE_SPLIT.split(text.strip()) if s]


def _join(pieces: list[tuple[str, bool]], sep: str) -> tuple[str, list[tuple[int, int]]]:
    """Join text pieces with ``sep``; spans of the pieces flagged as needles."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, (text, is_needle) in enumerate(pieces):
        if i:
            out.append(sep)
            pos += len(sep)
        if is_needle:
            spans.append((pos, pos + len(text)))
        out.append(text)
        pos += len(text)
    return "".join(out), spans


def essay_context(
    words: list[str], n_words: int, needles: list[str], rng: random.Random
) -> tuple[str, list[tuple[int, int]]]:
    """The first ``n_words`` words (cycled) with each needle placed between two sentences.

    Needle ``i`` goes after the sentence at a depth drawn without replacement from
    :data:`DEPTHS` (sorted, so needles keep their order), as RULER's essay haystack does.
    """
    text = " ".join(islice(cycle(words), n_words))
    sents = split_sentences(text)
    if len(needles) > len(DEPTHS):
        raise LongqaError(f"at most {len(DEPTHS)} needles fit the essay haystack")
    cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
    pieces: list[tuple[str, bool]] = []
    last = 0
    for cut, needle in zip(cuts, needles, strict=True):
        if cut > last:
            pieces.append((" ".join(sents[last:cut]), False))
        pieces.append((needle, True))
        last = cut
    if last < len(sents):
        pieces.append((" ".join(sents[last:]), False))
    return _join(pieces, " ")


def line_context(
    lines: list[str], needles: list[str], rng: random.Random
) -> tuple[str, list[tuple[int, int]]]:
    """``lines`` joined by newlines with the needles inserted, in order, at random line indexes."""
    n_slots = len(lines) + 1
    if n_slots >= len(needles):
        slots = sorted(rng.sample(range(n_slots), len(needles)))
    else:  # fewer lines than needles: several needles share a gap
        slots = sorted(rng.choices(range(n_slots), k=len(needles)))
    pieces: list[tuple[str, bool]] = []
    last = 0
    for slot, needle in zip(slots, needles, strict=True):
        pieces.extend((s, False) for s in lines[last:slot])
        pieces.append((needle, True))
        last = slot
    pieces.extend((s, False) for s in lines[last:])
    return _join(pieces, "\n")
