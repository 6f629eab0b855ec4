"""Quote verification: does a quoted "original text" really occur in its document?

Usage::

    m = verify_quote(quote, document, threshold=0.9)
    m.ok, m.kind ("exact" | "fuzzy" | "none"), m.ratio, m.text   # m.text = the document's own span

Both sides are normalised first (Unicode NFKC, curly quotes and dashes made plain, whitespace runs
collapsed), so line wrapping and typography never fail a true quote. A quote that is not an exact
substring is compared with the best-aligned window of the document (``difflib.SequenceMatcher``
ratio); at ``ratio >= threshold`` it counts as a near-verbatim quote. Either way ``m.text`` is the
span of the *original* document that matched, so builders can replace a near-verbatim quote with the
verbatim one — every kept quote token is then a true copy of the context.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass

_PLAIN = str.maketrans(
    {
        "“": '"',
        "”": '"',
        "„": '"',
        "‘": "'",
        "’": "'",
        "‚": "'",
        "–": "-",
        "—": "-",
        "‐": "-",
        "…": "...",
    }
)


@dataclass
class QuoteMatch:
    ok: bool
    kind: str  # "exact", "fuzzy" or "none"
    ratio: float
    text: str = ""  # the matched span of the original document
    start: int = -1  # character offsets into the original document
    end: int = -1


def normalize_with_map(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each of its characters, the index of its source character."""
    out: list[str] = []
    index: list[int] = []
    prev_space = True
    for i, ch in enumerate(text):
        piece = unicodedata.normalize("NFKC", ch).translate(_PLAIN)
        for c in piece:
            if c.isspace():
                if prev_space:
                    continue
                c, prev_space = " ", True
            else:
                prev_space = False
            out.append(c)
            index.append(i)
    while out and out[-1] == " ":
        out.pop()
        index.pop()
    return "".join(out), index


def normalize(text: str) -> str:
    return normalize_with_map(text)[0]


def verify_quote(quote: str, document: str, threshold: float = 0.9) -> QuoteMatch:
    """Locate ``quote`` in ``document`` exactly (normalised) or near-verbatim (see module doc)."""
    q = normalize(quote).strip(" \"'")
    if not q:
        return QuoteMatch(False, "none", 0.0)
    d, index = normalize_with_map(document)
    pos = d.find(q)
    if pos >= 0:
        return _match(True, "exact", 1.0, document, index, pos, pos + len(q))
    ratio, start, end = _best_window(q, d)
    if ratio >= threshold:
        return _match(True, "fuzzy", ratio, document, index, start, end)
    return QuoteMatch(False, "none", round(ratio, 4))


def _match(
    ok: bool, kind: str, ratio: float, doc: str, index: list[int], start: int, end: int
) -> QuoteMatch:
    s = index[start]
    e = index[end - 1] + 1
    return QuoteMatch(ok, kind, round(ratio, 4), doc[s:e], s, e)


def _best_window(q: str, d: str) -> tuple[float, int, int]:
    """Best SequenceMatcher ratio of ``q`` against windows of ``d`` anchored on matching blocks."""
    if not d:
        return 0.0, 0, 0
    sm = difflib.SequenceMatcher(None, d, q, autojunk=False)
    blocks = sorted(sm.get_matching_blocks()[:-1], key=lambda b: -b.size)[:5]
    best = (0.0, 0, 0)
    n = len(q)
    for b in blocks:
        anchor = b.a - b.b  # where the quote would start if this block is aligned
        for length in {n, int(n * 0.95), int(n * 1.05)}:
            for shift in (-3, 0, 3):
                start = max(0, anchor + shift)
                end = min(len(d), start + max(1, length))
                r = difflib.SequenceMatcher(None, d[start:end], q, autojunk=False).ratio()
                if r > best[0]:
                    best = (r, start, end)
    return best
