"""RULER's needle-in-a-haystack family (8 tasks): single, multi-key, multi-value, multi-query.

Needles read "One of the special magic {numbers} for {key} is: {value}." (RULER's niah.py). Keys
are words (two joined words) or UUIDs, values 7-digit numbers or UUIDs; ``num_needle_k`` keys with
``num_needle_v`` values each are hidden (all of them distinct), ``num_needle_q`` of the keys are
asked for, and the expected outputs are all values of the asked keys. The ``needle`` haystack is
made of distractor needles with other keys and values. With one query and one value the template
is put in the singular ("A special magic number is hidden …"), as RULER does.

Usage::

    from longqa.eval.ruler.niah import generate
    sample = generate(TASKS["niah_single_1"], n_haystack=100, seed="0-niah_single_1-4096-0", ctx=ctx)
"""

from __future__ import annotations

import random

from longqa.core.errors import LongqaError
from longqa.eval.ruler.haystack import NOISE, essay_context, line_context
from longqa.eval.ruler.tasks import FAMILIES, GenContext, RulerSample, TaskSpec, fill, shift
from longqa.eval.ruler.words import distinct_needles

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."


def _singular(text: str) -> str:
    return (
        text.replace("Some special", "A special")
        .replace("are all", "is")
        .replace(" are hidden", " is hidden")
        .replace("text are", "text is")
    )


def generate(spec: TaskSpec, n_haystack: int, seed: str, ctx: GenContext) -> RulerSample:
    """One sample with ``n_haystack`` haystack units (words, noise paragraphs or needle lines)."""
    k = spec.knobs
    nk = max(k["num_needle_k"], k["num_needle_q"])
    nv, nq = k["num_needle_v"], k["num_needle_q"]
    type_v = k["type_needle_v"]
    rng = random.Random(seed)
    keys = distinct_needles(rng, k["type_needle_k"], nk, ctx.words, set())
    flat = distinct_needles(rng, type_v, nk * nv, ctx.words, set(keys))
    values = [flat[i * nv : (i + 1) * nv] for i in range(nk)]
    needles = [
        NEEDLE.format(type_needle_v=type_v, key=key, value=v)
        for key, vals in zip(keys, values, strict=True)
        for v in vals
    ]
    random.Random(seed + "-order").shuffle(needles)
    queried = sorted(rng.sample(range(nk), nq))
    hay = k["type_haystack"]
    place = random.Random(seed + "-place")
    if hay == "essay":
        if not ctx.essay_words:
            raise LongqaError(f"{spec.name}: needs an essay haystack (--haystack FOLDER)")
        context, spans = essay_context(ctx.essay_words, n_haystack, needles, place)
    elif hay == "noise":
        context, spans = line_context([NOISE] * n_haystack, needles, place)
    elif hay == "needle":
        used = set(keys) | set(flat)
        dk = distinct_needles(rng, k["type_needle_k"], n_haystack, ctx.words, used)
        dv = distinct_needles(rng, type_v, n_haystack, ctx.words, used | set(dk))
        lines = [
            NEEDLE.format(type_needle_v=type_v, key=a, value=b) for a, b in zip(dk, dv, strict=True)
        ]
        context, spans = line_context(lines, needles, place)
    else:
        raise LongqaError(f"{spec.name}: unknown type_haystack '{hay}'")
    qkeys = [keys[i] for i in queried]
    query = ", ".join(qkeys[:-1]) + ", and " + qkeys[-1] if len(qkeys) > 1 else qkeys[0]
    family = FAMILIES["niah"]
    template, prefix, type_word = family.template, family.answer_prefix, type_v
    if nq * nv == 1:
        template, prefix, type_word = _singular(template), _singular(prefix), type_v[:-1]
    text, offset = fill(template, context, type_needle_v=type_word, query=query)
    return RulerSample(
        input=text,
        answer_prefix=prefix.format(type_needle_v=type_word, query=query),
        outputs=[v for i in queried for v in values[i]],
        spans=shift(spans, offset),
        meta={"keys": keys, "values": values, "queried": qkeys, "needles": needles},
    )
