"""RULER's common words extraction (``cwe``): name the 10 words repeated most in a long list.

``num_cw`` common words appear ``freq_cw`` times each and every other word ``freq_ucw`` times, in
a shuffled numbered list "1. word 2. word …"; the expected outputs are the common words. The
haystack unit is the number of distinct words. One worked example (40 words, frequencies 10 and
3) comes first; below a 4096-token target RULER shrinks everything (example: 20 words at 3/1,
question: frequencies 6/1), and so does this generator.

Usage::

    from longqa.eval.ruler.common_words import generate
    sample = generate(TASKS["cwe"], n_haystack=300, seed="0-cwe-4096-0", ctx=ctx)
"""

from __future__ import annotations

import random

from longqa.core.errors import LongqaError
from longqa.eval.ruler.tasks import FAMILIES, GenContext, RulerSample, TaskSpec, fill


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def word_list(
    rng: random.Random,
    pool: tuple[str, ...],
    n_words: int,
    freq_common: int,
    freq_rare: int,
    n_common: int,
) -> tuple[list[str], list[str]]:
    """``(shuffled list, common words)`` of ``n_words`` distinct words drawn from ``pool``."""
    if n_words > len(pool):
        raise LongqaError(f"cwe: {n_words} distinct words needed, the word pool has {len(pool)}")
    if n_words <= n_common:
        raise LongqaError(f"cwe: needs more than {n_common} distinct words (got {n_words})")
    chosen = rng.sample(pool, n_words)
    common, rare = chosen[:n_common], chosen[n_common:]
    listed = common * freq_common + rare * freq_rare
    rng.shuffle(listed)
    return listed, common


def generate(spec: TaskSpec, n_haystack: int, seed: str, ctx: GenContext) -> RulerSample:
    """One sample listing ``n_haystack`` distinct words."""
    k = spec.knobs
    fam = FAMILIES["common_words"]
    small = ctx.length < 4096
    ex_shape = (20, 3, 1) if small else (40, 10, 3)
    freq = (6, 1) if small else (k["freq_cw"], k["freq_ucw"])
    rng = random.Random(seed)
    shots = []
    for _ in range(k.get("num_fewshot", 1)):
        listed, common = word_list(rng, ctx.words, *ex_shape, k["num_cw"])
        shot, _ = fill(fam.template, numbered(listed))
        shots.append(shot + fam.answer_prefix + " " + numbered(common))
    listed, common = word_list(rng, ctx.words, n_haystack, *freq, k["num_cw"])
    text, _ = fill(fam.template, numbered(listed))
    head = "\n".join(shots) + "\n"
    return RulerSample(
        input=head + text,
        answer_prefix=fam.answer_prefix,
        outputs=common,
        meta={"listed": listed, "freq": list(freq)},
    )
