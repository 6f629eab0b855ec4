"""Prompt encoding (chat template + RULER's answer prefix, one BOS) and the haystack-size search.

RULER counts the tokens to generate inside the length: a sample of target length ``L`` has a
prompt of at most ``L - tokens_to_generate`` tokens. :func:`fit_sample` finds, by binary search
over the number of haystack units, the largest haystack whose encoded prompt stays within that
budget, so every prompt lands just under its target.

Usage::

    from longqa.eval.ruler.prompt import fit_sample
    sample, ids, n = fit_sample(tokenizer, TASKS["vt"], 4096, "0-vt-4096-0", ctx)
"""

from __future__ import annotations

from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.prompting import chat_text, encode_for_generation
from longqa.eval.ruler.generators import generator_for
from longqa.eval.ruler.tasks import GenContext, RulerSample, TaskSpec


def encode_prompt(tokenizer: Any, user: str, answer_prefix: str) -> list[int]:
    """Token ids of ``user`` in the chat template, then the answer prefix; exactly one BOS.

    The answer prefix follows the assistant header as the start of the reply (its leading space
    dropped after a header that ends in white space); the ids come from the project's one prompt
    encoder (:func:`longqa.data.prompting.encode_for_generation`).
    """
    text = chat_text(tokenizer, user)
    prefix = answer_prefix.lstrip(" ") if text[-1:].isspace() else answer_prefix
    return encode_for_generation(tokenizer, text + prefix)


def _min_units(spec: TaskSpec) -> int:
    return spec.knobs.get("num_cw", 0) + 1 if spec.family == "common_words" else 1


def fit_sample(
    tokenizer: Any, spec: TaskSpec, length: int, seed: str, ctx: GenContext
) -> tuple[RulerSample, list[int], int]:
    """``(sample, prompt ids, haystack units)`` for the largest haystack that fits ``length``."""
    gen = generator_for(spec.family)
    budget = length - spec.tokens_to_generate
    cache: dict[int, tuple[RulerSample, list[int]]] = {}

    def build(n: int) -> tuple[RulerSample, list[int]]:
        if n not in cache:
            s = gen(spec, n, seed, ctx)
            cache[n] = (s, encode_prompt(tokenizer, s.input, s.answer_prefix))
        return cache[n]

    lo = _min_units(spec)
    if len(build(lo)[1]) > budget:
        raise LongqaError(
            f"{spec.name}: length {length} is too short (the smallest prompt has "
            f"{len(build(lo)[1])} tokens, {spec.tokens_to_generate} more are kept for the answer)"
        )
    probe = lo + 32
    per_unit = max((len(build(probe)[1]) - len(build(lo)[1])) / (probe - lo), 1e-3)
    hi = max(probe, int((budget - len(build(lo)[1])) / per_unit * 1.5) + lo + 1)
    while len(build(hi)[1]) <= budget:  # make sure hi is past the budget
        lo, hi = hi, hi * 2
        if spec.family == "qa" and build(lo)[0].meta.get("docs", 0) < lo:
            return (*build(lo), lo)  # every document is in already
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(build(mid)[1]) <= budget:
            lo = mid
        else:
            hi = mid
    return (*build(lo), lo)
