"""RULER generators: hand-computed small examples, needles where the spans say, distinct keys and
values, chains that resolve, most-frequent words that really are, and the task table."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest

from longqa.core.errors import LongqaError
from longqa.eval.ruler import haystack as hs
from longqa.eval.ruler.common_words import generate as cwe_generate
from longqa.eval.ruler.freq_words import NOISE_WORD, zeta, zipf_counts
from longqa.eval.ruler.freq_words import generate as fwe_generate
from longqa.eval.ruler.niah import NEEDLE
from longqa.eval.ruler.niah import generate as niah_generate
from longqa.eval.ruler.tasks import TASKS, GenContext, resolve_tasks
from longqa.eval.ruler.variable_tracking import generate as vt_generate
from longqa.eval.ruler.words import word_pool

ESSAY = (
    "Alpha beta gamma. Delta epsilon zeta eta! Theta iota? Kappa lambda mu. Nu xi omicron pi. "
    "Rho sigma tau. Upsilon phi chi psi omega."
).split()


@pytest.fixture(scope="module")
def ctx() -> GenContext:
    return GenContext(words=word_pool(None, 2000), essay_words=ESSAY * 50, length=4096)


class FixedRng(random.Random):
    """``sample`` returns the first k items: makes positions hand-computable."""

    def sample(self, population, k, **kw):  # noqa: ANN001
        return list(population)[:k]


def test_essay_context_hand_example():
    words = "A b. C d. E f. G h.".split()
    # 4 sentences; depth DEPTHS[0] = 0 → needle before the first sentence
    text, spans = hs.essay_context(words, 8, ["N1."], FixedRng(0))
    assert text == "N1. A b. C d. E f. G h."
    assert spans == [(0, 3)]
    # two needles at depths 0 and 3 % of 4 sentences: both cut at sentence 0, in order
    text, spans = hs.essay_context(words, 8, ["N1.", "N2."], FixedRng(0))
    assert text == "N1. N2. A b. C d. E f. G h."
    assert [text[a:b] for a, b in spans] == ["N1.", "N2."]


def test_line_context_hand_example():
    text, spans = hs.line_context(["x", "y", "z"], ["N1", "N2"], FixedRng(0))
    assert text == "N1\nx\nN2\ny\nz"  # gaps 0 and 1 of 0..3: before x, before y
    assert [text[a:b] for a, b in spans] == ["N1", "N2"]
    text, _ = hs.line_context([], ["N1", "N2", "N3"], random.Random(0))  # more needles than gaps
    assert text == "N1\nN2\nN3"


def test_depths_are_rulers_forty():
    assert len(hs.DEPTHS) == 40 and hs.DEPTHS[0] == 0 and hs.DEPTHS[-1] == 100
    assert hs.DEPTHS[1] == 3 and hs.DEPTHS[20] == 51  # round(linspace(0, 100, 40))


@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].family == "niah"])
def test_niah_needles_where_spans_say(task, ctx):
    spec = TASKS[task]
    k = spec.knobs
    s = niah_generate(spec, 60, f"7-{task}", ctx)
    nk, nv, nq = max(k["num_needle_k"], k["num_needle_q"]), k["num_needle_v"], k["num_needle_q"]
    keys, values = s.meta["keys"], s.meta["values"]
    assert len(set(keys)) == nk and len({v for vs in values for v in vs}) == nk * nv
    assert not set(keys) & {v for vs in values for v in vs}
    assert len(s.spans) == nk * nv
    spanned = {s.input[a:b] for a, b in s.spans}
    expected = {
        NEEDLE.format(type_needle_v=k["type_needle_v"], key=key, value=v)
        for key, vs in zip(keys, values, strict=True)
        for v in vs
    }
    assert spanned == expected
    # every expected value sits inside a needle of a queried key, and the question names them
    assert len(s.outputs) == nq * nv
    for v in s.outputs:
        owner = next(key for key, vs in zip(keys, values, strict=True) if v in vs)
        assert owner in s.meta["queried"]
        assert s.input.count(f" for {owner} is: {v}.") == 1
    question = s.input.rsplit("\n", 1)[1]
    assert all(q in question for q in s.meta["queried"])
    if nq * nv == 1:
        assert s.input.startswith("A special magic") and s.answer_prefix.endswith("text is")
    else:
        assert s.input.startswith("Some special magic") and s.answer_prefix.endswith("text are")
    if k["type_needle_v"] == "uuids":
        assert all(
            re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v)
            for v in s.outputs
        )
    else:
        assert all(re.fullmatch(r"[1-9]\d{6}", v) for v in s.outputs)
    # needles sit between whole sentences (essay) or whole lines (noise, needle haystacks)
    for a, b in s.spans:
        if k["type_haystack"] == "essay":
            assert a == 0 or (s.input[a - 1] in " \n" and s.input[: a - 1].rstrip()[-1] in ".!?\n")
        else:
            assert s.input[a - 1] == "\n" and s.input[b] == "\n"
    if k["type_haystack"] == "essay":  # removing the needles gives back the essay words in order
        body = s.input.split("\n")[1]
        for needle in expected:
            body = body.replace(needle + " ", "").replace(" " + needle, "")
        assert body.split() == (ESSAY * 50)[:60]
    if k["type_haystack"] == "needle":  # distractors never reuse a real key or value
        lines = [ln for ln in s.input.split("\n") if ln.startswith("One of")]
        assert len(lines) == 60 + nk * nv
        d_keys = [
            re.match(r"One of the special magic \w+ for (\S+) is", ln).group(1) for ln in lines
        ]
        assert len(set(d_keys)) == len(d_keys)


def test_niah_is_deterministic_and_keys_fixed_across_sizes(ctx):
    spec = TASKS["niah_multikey_1"]
    a, b = niah_generate(spec, 40, "s", ctx), niah_generate(spec, 40, "s", ctx)
    assert a.input == b.input
    c = niah_generate(spec, 80, "s", ctx)
    assert c.outputs == a.outputs and c.meta["keys"] == a.meta["keys"]
    assert niah_generate(spec, 40, "other", ctx).outputs != a.outputs


def _resolve(lines: list[str]) -> dict[str, str]:
    assign = {}
    for ln in lines:
        m = re.fullmatch(r"VAR (\w+) = (?:VAR (\w+)|(\d+))\s*", ln)
        if m:
            assign[m.group(1)] = m.group(2) or m.group(3)
    out = {}
    for var in assign:
        seen, v = set(), var
        while v in assign and v not in seen:
            seen.add(v)
            v = assign[v]
        out[var] = v
    return out


@pytest.mark.parametrize("chains,hops", [(1, 4), (2, 3)])
def test_vt_chains_resolve_to_the_answer(chains, hops, ctx):
    spec = TASKS["vt"].__class__(
        "vt",
        "variable_tracking",
        {"type_haystack": "noise", "num_chains": chains, "num_hops": hops},
    )
    s = vt_generate(spec, 30, "3-vt", ctx)
    example, question = s.input.split("\n\nMemorize", 1)[0], s.input[s.spans[0][0] :]
    value = s.meta["values"][0]
    resolved = _resolve(question.split("\n"))
    assert sorted(v for v, x in resolved.items() if x == value) == sorted(s.outputs)
    assert len(s.outputs) == hops + 1 and len(set(s.outputs)) == hops + 1
    assert len(resolved) == chains * (hops + 1)
    assert f"{hops + 1} variables are assigned the value {value}" in s.answer_prefix
    assert f"assigned the value {value} in the text above." in s.input
    # spans are the statements, one per line; the worked example's answer resolves as well
    assert all(s.input[a:b].startswith("VAR ") and s.input[b] == "\n" for a, b in s.spans)
    ex_value = re.search(r"assigned the value (\d+) in the text", example).group(1)
    ex_resolved = _resolve(example.split("\n"))
    assert sorted(v for v, x in ex_resolved.items() if x == ex_value) == sorted(
        s.meta["example_answer"]
    )
    assert example.rstrip().endswith(" ".join(s.meta["example_answer"]))


def _numbered_words(text: str) -> list[str]:
    return re.findall(r"\d+\. (\S+)", text)


@pytest.mark.parametrize("length", [2048, 4096])
def test_cwe_answer_is_most_common(length, ctx):
    c = GenContext(words=ctx.words, length=length)
    s = cwe_generate(TASKS["cwe"], 50, "1-cwe", c)
    listed = _numbered_words(s.input.rsplit("\n", 2)[-2])
    nums = [int(n) for n in re.findall(r"(\d+)\. ", s.input.rsplit("\n", 2)[-2])]
    assert nums == list(range(1, len(listed) + 1))
    counts = Counter(listed)
    top = [w for w, _ in counts.most_common(10)]
    assert sorted(top) == sorted(s.outputs) and len(set(s.outputs)) == 10
    hi, lo = (30, 3) if length >= 4096 else (6, 1)
    assert {counts[w] for w in s.outputs} == {hi} and set(counts.values()) == {hi, lo}
    assert len(counts) == 50
    # one worked example precedes the question, and its given answer is its own top 10
    assert s.input.count("Question: What are the 10 most common words") == 2
    example_list = _numbered_words(s.input.split("\n")[1])
    given = _numbered_words(s.input.split("\n")[2].split("list are:", 1)[1])
    ex_counts = Counter(example_list)
    assert sorted(given) == sorted(w for w, _ in ex_counts.most_common(10))
    assert len(ex_counts) == (40 if length >= 4096 else 20)


def test_zeta_matches_closed_forms():
    assert zeta(2.0) == pytest.approx(math.pi**2 / 6, rel=1e-12)
    assert zeta(4.0) == pytest.approx(math.pi**4 / 90, rel=1e-12)
    with pytest.raises(LongqaError):
        zeta(1.0)


def test_fwe_answer_is_most_frequent(ctx):
    s = fwe_generate(TASKS["fwe"], 3000, "2-fwe", ctx)
    body = s.input.split("coded words. ", 1)[1].split("\nQuestion:", 1)[0].split()
    counts = Counter(body)
    ranked = [w for w, _ in counts.most_common(4)]
    assert ranked[0] == NOISE_WORD and ranked[1:] == s.outputs
    z = math.pi**2 / 6
    assert counts[NOISE_WORD] == int(3000 / z)
    assert [counts[w] for w in s.outputs] == [int(3000 * k**-2 / z) for k in (2, 3, 4)]
    assert zipf_counts(3000, 4, 2.0) == [int(3000 * k**-2 / z) for k in range(1, 5)]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.outputs)


def test_resolve_tasks():
    assert len(resolve_tasks("all")) == 13
    assert resolve_tasks("niah") == [t for t in TASKS if t.startswith("niah")]
    assert resolve_tasks("vt,niah_single_1") == ["niah_single_1", "vt"]  # table order
    assert resolve_tasks("qa") == ["qa_1", "qa_2"]
    with pytest.raises(LongqaError, match="unknown RULER task 'nope'"):
        resolve_tasks("vt,nope")


def test_word_pool_is_deterministic_and_distinct(tmp_path):
    (tmp_path / "a.txt").write_text(
        "Harbor quiet harbor lantern, meadow! the a zebra.", encoding="utf-8"
    )
    pool = word_pool(str(tmp_path), 50)
    assert pool == word_pool(str(tmp_path), 50) and len(set(pool)) == len(pool) == 50
    assert {"harbor", "quiet", "lantern", "meadow", "zebra"} <= set(pool)
    assert "the" not in pool  # shorter than 4 letters
