"""Form-aware scoring of retrieval answers: the cited number, or the document a quote comes from.

LongBench's passage-retrieval score (:func:`longqa.eval.passage_retrieval.retrieval_score`) reads
every integer of the first 32 generated tokens, so an answer that first quotes the paragraph and
then names it is cut off before the number, and one that only quotes is scored 0 even when it
quotes the right paragraph. This module scores the *choice* instead, whatever the form:

- :func:`cited_number` — the number after "Paragraph"/"Document"/"段落"/"文档" (the first one), or
  a bare number the answer starts with;
- :func:`attribute_quote` — which of the candidate texts the output's longest verbatim run of
  words comes from (quote attribution); a run shorter than ``min_words`` attributes nothing;
- :func:`choose` — the cited number when there is one, else the attributed quote;
- :func:`quote_recall` — exact (the gold span appears in the output, after normalisation) and
  fuzzy (share of the gold span's words covered by runs of at least 4 words copied in order).

Usage::

    paras = split_numbered(row["context"])                 # LongBench context -> paragraph texts
    pick = choose(output, paras)                           # Choice(index=7, how="cited", ...)
    pick.index == gold                                     # form-aware hit
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher

_CITE = re.compile(r"(?:Paragraph|Document|段落|文档)\s*(\d+)", re.IGNORECASE)
_LEADING = re.compile(r"^\W*(\d+)\b")
_NUMBERED = re.compile(r"(?:^|\n\n)(?:Paragraph \d+: |段落\d+：|Document \d+:\n|文档 \d+：\n)")
_TOKEN = re.compile(r"[\w'’]+|[\u4e00-\u9fff]", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Lower-cased word tokens (CJK: one per character) after Unicode NFKC."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return _TOKEN.findall(text)


def split_numbered(context: str) -> list[str]:
    """The texts of the numbered blocks of a context, in order: LongBench's "Paragraph N: …" /
    "段落N：…", or the W-shaped samples' "Document N:" / "文档 N：" lines followed by the text."""
    marks = list(_NUMBERED.finditer(context))
    return [
        context[m.end() : marks[k + 1].start() if k + 1 < len(marks) else len(context)].strip()
        for k, m in enumerate(marks)
    ]


def cited_number(output: str) -> int | None:
    """The first "Paragraph N" / "Document N" / "段落N" / "文档N" number of ``output``, or a bare
    number the output starts with (the answer to LongBench's "The answer is: ")."""
    m = _CITE.search(output) or _LEADING.match(output)
    return int(m.group(1)) if m else None


MASK = "\x00"


def mask_echo(words: list[str], ignore: str | None, n: int = 4, mask: str = MASK) -> list[str]:
    """``words`` with every word inside an ``n``-gram shared with ``ignore`` replaced by a mask
    that matches nothing: what the model echoed from the question is not a quote."""
    if not ignore:
        return words
    ig = normalize_words(ignore)
    grams = {tuple(ig[i : i + n]) for i in range(len(ig) - n + 1)}
    hit = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in grams:
            hit[i : i + n] = [True] * n
    return [mask if h else w for w, h in zip(words, hit, strict=True)]


def longest_run(output: str, text: str, ignore: str | None = None) -> int:
    """Words of the longest run of ``output`` that also occurs verbatim (normalised) in ``text``,
    not counting what ``output`` echoes of ``ignore`` (the question)."""
    a, b = mask_echo(normalize_words(output), ignore), normalize_words(text)
    if not a or not b:
        return 0
    sm = SequenceMatcher(None, a, b, autojunk=False)
    return sm.find_longest_match(0, len(a), 0, len(b)).size


def attribute_quote(
    output: str, texts: list[str], min_words: int = 6, ignore: str | None = None
) -> tuple[int | None, int]:
    """``(1-based index of the text the output quotes, run length)``; ``None`` when no text shares
    a run of ``min_words`` words with the output, or two texts tie for the longest run. Words the
    output echoes from ``ignore`` (the question or query) do not count."""
    runs = [longest_run(output, t, ignore) for t in texts]
    if not runs:
        return None, 0
    best = max(runs)
    if best < min_words or runs.count(best) > 1:
        return None, best
    return runs.index(best) + 1, best


@dataclass
class Choice:
    index: int | None  # 1-based; None when the output names and quotes nothing
    how: str  # "cited" | "quote" | "none"
    cited: int | None
    quoted: int | None
    run_words: int


def choose(output: str, texts: list[str], min_words: int = 6, ignore: str | None = None) -> Choice:
    """The document the output picks: its cited number, else the document its quote comes from
    (echoes of ``ignore``, the question, excluded)."""
    cited = cited_number(output)
    quoted, run = attribute_quote(output, texts, min_words, ignore)
    if cited is not None:
        return Choice(cited, "cited", cited, quoted, run)
    if quoted is not None:
        return Choice(quoted, "quote", cited, quoted, run)
    return Choice(None, "none", cited, quoted, run)


def quote_recall(
    output: str, gold: str, min_run: int = 4, ignore: str | None = None
) -> tuple[bool, float]:
    """``(exact, fuzzy)``: whether the normalised gold span appears whole in the output, and the
    share of its words inside matching runs of at least ``min_run`` words (in order). Words of
    the gold span that the question gives away (``ignore``, e.g. its opening words) are left out
    of the fuzzy share, and the output's echo of the question is not counted."""
    g, o = normalize_words(gold), normalize_words(output)
    if not g:
        return False, 0.0
    exact = " ".join(g) in " ".join(o)
    if exact:
        return True, 1.0
    gm, om = mask_echo(g, ignore, mask="\x01"), mask_echo(o, ignore)  # masks never match
    wanted = sum(w != "\x01" for w in gm)
    if not wanted:
        return False, 0.0
    sm = SequenceMatcher(None, om, gm, autojunk=False)
    covered = sum(b.size for b in sm.get_matching_blocks() if b.size >= min_run)
    return False, covered / wanted


def shares_span(query: str, text: str, n: int = 8) -> bool:
    """True when ``query`` and ``text`` share a run of ``n`` consecutive (normalised) words."""
    q, t = normalize_words(query), normalize_words(text)
    grams = {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}
    return any(tuple(q[i : i + n]) in grams for i in range(len(q) - n + 1))
