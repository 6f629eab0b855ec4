"""Language-aware text utilities shared by the builders: language detection and word counting.

Chinese (and other CJK) text is counted in characters, everything else in whitespace-separated words,
which is how the long-context papers state lengths ("4000 words, or characters for Chinese").
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_LATIN_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f]+(?:['’\-][A-Za-z0-9\u00c0-\u024f]+)*")


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among non-space characters (0.0 for empty text)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if _CJK.match(c)) / len(chars)


def detect_lang(text: str, threshold: float = 0.2) -> str:
    """``"zh"`` when at least ``threshold`` of the characters are CJK, else ``"en"``."""
    return "zh" if cjk_ratio(text[:20000]) >= threshold else "en"


def count_words(text: str) -> int:
    """CJK characters each count as one word; other scripts count whitespace-delimited words."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN_WORD.findall(_CJK.sub(" ", text)))
    return cjk + latin
