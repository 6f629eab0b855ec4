"""Token counting and encoding for length targets: a real tokenizer by name, or an approximation.

Usage::

    counter = get_token_counter("smollm2-135m")   # any alias / local folder / hub id longqa knows
    counter = get_token_counter("approx")         # no model files: a regex estimate (tests, dry runs)
    n = counter.count("some text")
    ids = counter.encode("some text"); text = counter.decode(ids)   # packing exact-length blocks

Real tokenizers load through :func:`longqa.models.checkpoints.load_tokenizer`, so ``--tokenizer`` accepts the
same names as every other command. The approximation counts one token per CJK character, per
punctuation mark and per short word, and one extra per 6 further characters of a long word — close
to a BPE tokenizer on English prose (within ~15 % on essays) and fully deterministic. Its
``encode``/``decode`` pair is a reversible regex tokenizer (whitespace runs, CJK characters, ≤6-char
word pieces, punctuation; ids assigned on first sight, so ``decode(encode(t)) == t``): its ids are
not a model's, and ``count`` (which ignores whitespace) is not ``len(encode(...))``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

APPROX_NAMES = {"approx", "fast", "simple", "none"}

_CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]"
_PIECE = re.compile(_CJK + r"|\w+|[^\w\s]")  # what count() counts
_CODEC_PIECE = re.compile(r"\s+|" + _CJK + r"|\w{1,6}|[^\w\s]")  # what encode() emits


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ApproxTokenCounter:
    """Deterministic regex estimate of a BPE token count and a reversible regex codec (no model
    files needed; see the module docstring)."""

    name = "approx"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def count(self, text: str) -> int:
        n = 0
        for piece in _PIECE.findall(text):
            n += 1 + (len(piece) - 1) // 6 if len(piece) > 1 else 1
        return n

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _CODEC_PIECE.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.pieces)
                self.pieces.append(piece)
            ids.append(self.vocab[piece])
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


class HFTokenCounter:
    """A Hugging Face tokenizer: no special tokens added on encode, none skipped on decode."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


_CACHE: dict[str, TokenCounter] = {}


def get_token_counter(name: str | None) -> TokenCounter:
    """A counter for ``name`` (alias, path, hub id) or the approximation for None/"approx" (a new
    one each call: its codec ids start from 0)."""
    key = (name or "approx").strip()
    if key.lower() in APPROX_NAMES:
        return ApproxTokenCounter()
    if key not in _CACHE:
        from longqa.models.checkpoints import load_tokenizer

        _CACHE[key] = HFTokenCounter(load_tokenizer(key), key)
    return _CACHE[key]


def count_messages(
    messages: Sequence[dict[str, str]], counter: TokenCounter, per_message: int = 4
) -> int:
    """Tokens of a conversation: its contents plus ``per_message`` for each turn's chat-template
    markup (role header and end-of-turn; 4 matches ChatML-style templates such as SmolLM2's)."""
    return sum(counter.count(m["content"]) + per_message for m in messages)
