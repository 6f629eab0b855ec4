"""RULER's variable tracking (``vt``): follow chains of assignments ``VAR B = VAR A`` to a value.

Each chain starts ``VAR XXXXX = 12345`` (5 random capital letters, a 5-digit value) and continues
with ``num_hops`` statements ``VAR Y = VAR X``; ``num_chains`` chains (distinct names) are hidden,
one statement per line, in order within each chain, among the noise lines. The question asks for
every variable assigned the first chain's value; the expected outputs are that chain's
``num_hops + 1`` names. As in RULER, one worked example with a short haystack (its names and value
drawn afresh) precedes the question (3-letter names there, as in RULER).

Usage::

    from longqa.eval.ruler.variable_tracking import generate
    sample = generate(TASKS["vt"], n_haystack=80, seed="0-vt-4096-0", ctx=ctx)
"""

from __future__ import annotations

import random
import string

from longqa.core.errors import LongqaError
from longqa.eval.ruler.haystack import NOISE, essay_context, line_context
from longqa.eval.ruler.tasks import FAMILIES, GenContext, RulerSample, TaskSpec, fill, shift

EXAMPLE_NOISE_LINES = 8  # RULER sizes its worked example to a 500-token budget


def make_chains(
    rng: random.Random, num_chains: int, num_hops: int, name_len: int = 5
) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """``(names, statements, values)`` per chain; all names distinct, values distinct."""
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        v = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if v not in names:
            names.append(v)
    values: list[str] = []
    while len(values) < num_chains:
        x = str(rng.randint(10000, 99999))
        if x not in values:
            values.append(x)
    chain_names, chains = [], []
    for c in range(num_chains):
        these = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        chain_names.append(these)
        stmts = [f"VAR {these[0]} = {values[c]}"]
        stmts += [f"VAR {these[j + 1]} = VAR {these[j]}" for j in range(num_hops)]
        chains.append(stmts)
    return chain_names, chains, values


def interleave(chains: list[list[str]], rng: random.Random) -> list[str]:
    """All statements in a random interleaving that keeps each chain's own order."""
    pos = [0] * len(chains)
    out: list[str] = []
    while len(out) < sum(map(len, chains)):
        live = [i for i, c in enumerate(chains) if pos[i] < len(c)]
        i = rng.choice(live)
        out.append(chains[i][pos[i]])
        pos[i] += 1
    return out


def _one(spec: TaskSpec, n_haystack: int, rng: random.Random, ctx: GenContext, name_len: int):
    k = spec.knobs
    names, chains, values = make_chains(rng, k["num_chains"], k["num_hops"], name_len)
    stmts = interleave(chains, rng)
    if k.get("type_haystack", "noise") == "essay":
        if not ctx.essay_words:
            raise LongqaError(f"{spec.name}: needs an essay haystack (--haystack FOLDER)")
        context, spans = essay_context(ctx.essay_words, n_haystack, [s + "." for s in stmts], rng)
    else:
        context, spans = line_context([NOISE] * n_haystack, stmts, rng)
    fam = FAMILIES["variable_tracking"]
    text, offset = fill(fam.template, context, query=values[0])
    prefix = fam.answer_prefix.format(num_v=k["num_hops"] + 1, query=values[0])
    return text, prefix, names, values, shift(spans, offset)


def generate(spec: TaskSpec, n_haystack: int, seed: str, ctx: GenContext) -> RulerSample:
    """One sample with ``n_haystack`` noise lines (or essay words) and the worked example."""
    ex_text, ex_prefix, ex_names, _, _ = _one(
        spec, EXAMPLE_NOISE_LINES, random.Random(seed + "-example"), ctx, 3
    )
    example = ex_text + ex_prefix + " ".join(ex_names[0]) + "\n"
    text, prefix, names, values, spans = _one(spec, n_haystack, random.Random(seed), ctx, 5)
    return RulerSample(
        input=example + "\n" + text,
        answer_prefix=prefix,
        outputs=names[0],
        spans=shift(spans, len(example) + 1),
        meta={"chains": names, "values": values, "example_answer": ex_names[0]},
    )
