"""The paraphrase ablation's data sets: each arm's W-shaped training set and the held-out eval sets.

Usage (``longqa experiment run`` hands this module to :func:`longqa.experiment.run.run_experiment`,
which calls these functions, each writing one stage folder)::

    build_arm_data(exp, prof, train_dir, folder, form="paraphrase")   # paraphrase-mdqa builder
    build_mdqa_eval(exp, prof, eval_dir, folder)                        # held-out W-shaped QA
    build_retrieval(exp, prof, eval_dir, folder, variant="keywords")    # LongBench-format rows

The arms call the ``paraphrase-mdqa`` builder with the same options except ``answer_style`` and
with ``neutral_questions`` on, so they share documents, groups, questions and gold documents. The
retrieval sets come from the ``passage-retrieval`` builder; the ``keywords`` variant replaces each
verbatim abstract by salient words of the paragraph (or, given an LLM endpoint, an abstract it
writes in its own words), checked to share no 8-word span with the paragraph.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_text, iter_jsonl
from longqa.eval.attribution import shares_span, split_numbered

_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{5,}")
_STOP = set(
    "because before between should through without something anything everything people "
    "another really actually always either itself others whether rather".split()
)
ABSTRACT_PROMPT = (
    "Write a one- or two-sentence abstract of the paragraph below in your own words. Do not copy "
    "any phrase of five or more words from it.\n\n{paragraph}\n\nAbstract:"
)


def mdqa_options(exp: Any, prof: Any, corpus: Path, out: Path, **kw: Any) -> Any:
    """Options of the paraphrase-mdqa builder shared by every arm (extractive, neutral)."""
    from data_builders.paraphrase_mdqa import Options

    t = prof.train
    values: dict[str, Any] = {
        "corpus": str(corpus),
        "out": str(out),
        "generator": "extractive",
        "tokenizer": prof.model,
        "num_samples": t.samples,
        "target_tokens": t.target_tokens,
        "docs_per_group": t.docs_per_group,
        "max_doc_tokens": t.max_doc_tokens,
        "turns": t.turns,
        "negative_ratio": 0.0,
        "neutral_questions": True,
        "question_style": exp.question_style,
        "seed": exp.seed,
        "progress": False,
        "lang": "en",
    }
    values.update(kw)
    return Options(**values)


def build_arm_data(
    exp: Any, prof: Any, train_dir: Path, folder: Path, form: str, samples: int | None = None
) -> dict:
    """The arm's training set (answer form ``form``, ``samples`` or the profile's number of
    samples) in ``folder``; returns the builder stats (``assistant_tokens``: answer tokens)."""
    from data_builders.paraphrase_mdqa import build

    kw = {"num_samples": samples} if samples else {}
    stats = build(mdqa_options(exp, prof, train_dir, folder, answer_style=form, **kw))
    if not stats.get("samples"):
        raise LongqaError(f"{exp.source}: profile sizes built no training samples for '{form}'")
    keep = ("samples", "dropped_samples", "effective_token_share", "length_histogram",
            "assistant_tokens", "quote_tokens")  # fmt: skip
    out = {k: stats[k] for k in keep if k in stats}
    out["gold_positions"] = dict(Counter(str(p) for p in gold_positions(folder)))
    return out


def gold_positions(folder: Path) -> list[int]:
    """The document number of every positive turn of the samples in ``folder``."""
    from longqa.data.schema import read_samples

    return [
        r["doc_index"]
        for s in read_samples(folder)
        for r in s.meta["relevant"]
        if r["doc_index"] is not None
    ]


def build_mdqa_eval(
    exp: Any, prof: Any, eval_dir: Path, folder: Path, question_style: str | None = None
) -> dict:
    """Held-out W-shaped samples, one question each (the relevant document at a spread depth).

    With ``question_style`` (a probe set) the first ``n`` samples with at least ``min_docs``
    documents go to ``folder/probe.jsonl``; scattered questions are asserted to share no run of
    5 words with their gold document (:func:`assert_no_giveaway`)."""
    from data_builders.paraphrase_mdqa import build

    ev = prof.eval
    extra = {"question_style": question_style} if question_style else {}
    opts = mdqa_options(
        exp, prof, eval_dir, folder,
        num_samples=2 * ev.n + 8,  # some drop (no unique hint, too few documents): keep n
        target_tokens=ev.mdqa_target_tokens, turns=1, seed=exp.seed + 1000, **extra,
    )  # fmt: skip
    stats = build(opts)
    if not stats.get("samples"):
        raise LongqaError(
            f"{exp.source}: profiles: eval.mdqa_target_tokens / train.max_doc_tokens built no "
            f"held-out W-shaped samples ({stats.get('drop_reasons')})"
        )
    res = {"samples": stats.get("samples", 0), "dropped_samples": stats.get("dropped_samples")}
    if question_style is None:
        return res
    from longqa.data.schema import read_samples

    rows = [s.model_dump(mode="json") for s in read_samples(folder)]
    rows.sort(key=lambda r: r["id"])
    kept = [r for r in rows if r["meta"]["num_docs"] >= ev.min_docs][: ev.n]
    if question_style == "scattered":
        assert_no_giveaway(kept, where=str(folder))
    path = folder / "probe" / "probe.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    docs = [r["meta"]["num_docs"] for r in kept]
    return {**res, "file": str(path), "n": len(kept), "fewer_docs": sum(
        r["meta"]["num_docs"] < ev.min_docs for r in rows), "docs_min": min(docs, default=0),
        "docs_mean": round(sum(docs) / max(1, len(docs)), 2)}  # fmt: skip


NO_RUN = 5


def assert_no_giveaway(rows: list[dict], where: str, n: int = NO_RUN) -> None:
    """Raise when a sample's question shares a run of ``n`` words with its gold document."""
    for r in rows:
        user = r["messages"][1]["content"]
        question = user.rsplit("\n\n", 1)[-1]
        gold = r["meta"]["relevant"][0]["doc_index"]
        doc = split_numbered(user.rsplit("\n\n", 2)[0])[gold - 1]
        if shares_span(question, doc, n):
            raise LongqaError(
                f"{where}: sample {r['id']}: the question shares a run of {n} words with its "
                "gold document (a lexical giveaway)"
            )


def cross_corpus(exp: Any, folder: Path) -> Path:
    """The corpus of ``probe-xcorpus``: Python's standard-library documentation as text files."""
    from data_builders.offline_corpus import stdlib_docs

    return stdlib_docs(folder)


def build_retrieval(
    exp: Any,
    prof: Any,
    eval_dir: Path,
    folder: Path,
    *,
    variant: str,
    base_url: str | None = None,
    llm_model: str | None = None,
) -> dict:
    """``folder/passage_retrieval_en.jsonl`` of ``n`` rows; ``keywords`` rewrites the queries."""
    from data_builders.longbench_pr import Options, build

    ev = prof.eval
    stats = build(
        Options(
            corpus=eval_dir,
            out=folder,
            lang="en",
            num_samples=ev.n,
            num_paragraphs=ev.pr_paragraphs,
            max_words=ev.pr_max_words,
            seed=exp.seed + 2000,
        )
    )
    path = Path(stats["file"])
    if variant == "verbatim":
        return {"file": str(path), "samples": stats["samples"], "query": "extractive summary"}
    rows = [r for _, r in iter_jsonl(path)]
    how = {"keywords": 0, "llm": 0}
    abstracts = _llm_abstracts(rows, base_url, llm_model) if base_url else [None] * len(rows)
    rng = random.Random(exp.seed)
    for row, abstract in zip(rows, abstracts, strict=True):
        paras = split_numbered(row["context"])
        gold = int(re.findall(r"\d+", row["answers"][0])[0])
        target = paras[gold - 1]
        if abstract and not shares_span(abstract, target, 8):
            row["input"], kind = abstract, "llm"
        else:
            row["input"], kind = (
                keyword_query(target, [p for p in paras if p != target], rng),
                "keywords",
            )
        if shares_span(row["input"], target, 8):
            raise LongqaError(f"{path}: query of row {row['_id']} shares an 8-word span")
        how[kind] += 1
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"file": str(path), "samples": len(rows), "query": how}


def keyword_query(target: str, others: list[str], rng: random.Random, k: int = 6) -> str:
    """``Keywords: …`` — the paragraph's long words found in the fewest other paragraphs."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(target)))
    words = [w for w in words if w not in _STOP]
    low = [o.lower() for o in others]
    ranked = sorted(words, key=lambda w: (sum(w in o for o in low), rng.random()))
    chosen = set(ranked[:k])
    return "Keywords: " + ", ".join(w for w in words if w in chosen)


def _llm_abstracts(rows: list[dict], base_url: str, model: str | None) -> list[str | None]:
    """One abstract per row from an OpenAI-compatible endpoint (``None`` where the call failed)."""
    import asyncio

    from longqa.data.llm import LLMClient, LLMError, run_sync

    if not model:
        raise LongqaError("--base-url needs --model (the served model that writes abstracts)")
    client = LLMClient(base_url=base_url, model=model, concurrency=8)

    async def one(row: dict) -> str | None:
        paras = split_numbered(row["context"])
        gold = int(re.findall(r"\d+", row["answers"][0])[0])
        msg = [{"role": "user", "content": ABSTRACT_PROMPT.format(paragraph=paras[gold - 1])}]
        try:
            reply = await client.acomplete(msg, temperature=0.0, max_tokens=160)
        except LLMError:
            return None
        return reply.text.strip() or None

    async def all_rows() -> list[str | None]:
        try:
            return list(await asyncio.gather(*(one(r) for r in rows)))
        finally:
            await client.aclose()

    return run_sync(all_rows())
