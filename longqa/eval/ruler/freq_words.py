"""RULER's frequent words extraction (``fwe``): the three most frequent coded words of a text.

A vocabulary of random ``coded_wordlen``-letter words (size ``target / 50`` unless ``vocab_size``
is set) is ranked at random; rank ``k`` appears ``int(n · k^-alpha / ζ(alpha))`` times (a Zipf
law with exponent ``alpha``), the top rank being the noise token ``...``; the shuffled words form
the text and the expected outputs are ranks 2–4. The haystack unit is ``n``.

Usage::

    from longqa.eval.ruler.freq_words import generate
    sample = generate(TASKS["fwe"], n_haystack=2000, seed="0-fwe-4096-0", ctx=ctx)
"""

from __future__ import annotations

import random
import string

from longqa.core.errors import LongqaError
from longqa.eval.ruler.tasks import FAMILIES, GenContext, RulerSample, TaskSpec, fill

NOISE_WORD = "..."


def zeta(alpha: float) -> float:
    """Riemann ζ(alpha) for alpha > 1 (mpmath, which torch's sympy brings along)."""
    import mpmath

    if alpha <= 1:
        raise LongqaError(f"fwe: alpha must be > 1 (got {alpha})")
    return float(mpmath.zeta(alpha))


def zipf_counts(n: int, vocab: int, alpha: float) -> list[int]:
    """Occurrences of ranks 1..vocab: ``int(n · k^-alpha / ζ(alpha))``."""
    z = zeta(alpha)
    return [int(n * k**-alpha / z) for k in range(1, vocab + 1)]


def coded_vocab(rng: random.Random, size: int, wordlen: int) -> list[str]:
    """``size`` distinct random lower-case words of ``wordlen`` letters, in random rank order."""
    seen: set[str] = set()
    while len(seen) < size:
        seen.add("".join(rng.choices(string.ascii_lowercase, k=wordlen)))
    vocab = sorted(seen)
    rng.shuffle(vocab)
    vocab[0] = NOISE_WORD
    return vocab


def generate(spec: TaskSpec, n_haystack: int, seed: str, ctx: GenContext) -> RulerSample:
    """One sample of ``n_haystack`` (the Zipf scale ``n``) coded words."""
    k = spec.knobs
    size = k.get("vocab_size", -1)
    size = size if size and size > 0 else max(10, (ctx.length - spec.tokens_to_generate) // 50)
    rng = random.Random(seed)
    vocab = coded_vocab(rng, size, k.get("coded_wordlen", 6))
    counts = zipf_counts(n_haystack, size, k["alpha"])
    words = [w for w, c in zip(vocab, counts, strict=True) for _ in range(c)]
    rng.shuffle(words)
    fam = FAMILIES["freq_words"]
    text, _ = fill(fam.template, " ".join(words))
    return RulerSample(
        input=text,
        answer_prefix=fam.answer_prefix,
        outputs=vocab[1:4],
        meta={"counts": dict(zip(vocab, counts, strict=True))},
    )
