"""The experiment's evaluations of one arm's model (every arm with the same settings).

Usage (what the ``eval/<arm>`` stage runs; each writes a resumable ``ResultStore`` folder)::

    rows = eval_retrieval(model, tok, spec, data_file, out / "pr-keywords", max_new_tokens=160)
    rows = eval_mdqa(model, tok, spec, samples_dir, out / "mdqa", n=40, max_new_tokens=160)
    rows = eval_needle(...); rows = eval_passkey(...)           # the longqa.eval runners

Passage retrieval is generated once with a budget that fits a quote and an answer; the LongBench
score is computed on the first 32 new tokens (greedy decoding makes them what a 32-token run
would produce), the form-aware hit from the whole answer (cited number, else quote attribution).
Multi-document QA asks the first question of each held-out W-shaped sample and scores the chosen
word, quote recall (exact / fuzzy) and the document chosen (cited or quoted) against the gold one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from longqa.eval.attribution import choose, quote_recall, split_numbered

LONGBENCH_NEW_TOKENS = 32


def _generate_rows(model, tok, spec, items, store, max_new_tokens, score, label, progress, batch):  # noqa: ANN001
    """Generate for the items not in ``store`` with the eval runner, score, append; the rows."""
    from longqa.eval.runner import GreedyGenerator, run_items

    run_items(
        items, GreedyGenerator(model, tok, rope=spec), store, max_new_tokens=max_new_tokens,
        score=score, description=label, batch_size=batch, show_progress=progress, score_ids=True,
    )  # fmt: skip
    keys = {it["key"] for it in items}
    return [r for r in store.rows if r["key"] in keys]


def eval_retrieval(
    model: Any,
    tok: Any,
    spec: Any,
    data: Path,
    out: Path,
    *,
    max_new_tokens: int,
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """LongBench-format passage retrieval: exact LongBench score and form-aware choice per row."""
    from longqa.eval.passage_retrieval import (
        MAX_NEW_TOKENS,
        build_prompt,
        default_max_length,
        detect_lang,
        read_longbench,
        sample_score,
    )
    from longqa.eval.runner import ResultStore

    rows = read_longbench(data)
    lang = detect_lang(rows, data)
    budget = default_max_length(model, spec) + MAX_NEW_TOKENS - max_new_tokens
    store = ResultStore(out, {"task": "passage-retrieval", "data": str(data), "budget": budget,
                              "max_new_tokens": max_new_tokens})  # fmt: skip
    items = []
    for row in rows:
        prompt = build_prompt(tok, row, lang, budget)
        gold = int(re.findall(r"\d+", row["answers"][0])[0])
        items.append({"key": row["_id"], "gold": gold, "answers": row["answers"],
                      "paragraphs": len(split_numbered(row["context"])),
                      "ids": list(tok(prompt, add_special_tokens=False)["input_ids"])})  # fmt: skip
    contexts = {row["_id"]: split_numbered(row["context"]) for row in rows}
    queries = {row["_id"]: row["input"] for row in rows}  # an echo of the query is no quote

    def score(it: dict, text: str, new: list[int]) -> dict[str, Any]:
        head = tok.decode(new[:LONGBENCH_NEW_TOKENS], skip_special_tokens=True)
        lb = sample_score(head, it["answers"], lang)
        pick = choose(text, contexts[it["key"]], ignore=queries[it["key"]])
        return {
            "longbench_score": lb,
            "longbench_hit": lb == 1.0,
            "choice": pick.index,
            "choice_how": pick.how,
            "quoted": pick.quoted,
            "run_words": pick.run_words,
            "form_hit": pick.index == it["gold"],
        }

    return _generate_rows(model, tok, spec, items, store, max_new_tokens, score,
                          f"retrieval {Path(out).name}", progress, batch_size)  # fmt: skip


def _answer_part(text: str) -> str:
    at = max(text.rfind("Answer:"), text.rfind("回答："))
    return text[at:] if at >= 0 else text


def word_hit(text: str, gold: str, choices: list[str]) -> bool:
    """The gold word is in the answer part and none of the other offered words is."""
    part = _answer_part(text).lower()

    def has(w: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", part) is not None

    return has(gold) and not any(has(w) for w in choices if w != gold)


def eval_mdqa(
    model: Any,
    tok: Any,
    spec: Any,
    samples: Path,
    out: Path,
    *,
    n: int,
    max_new_tokens: int,
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """First question of ``n`` held-out W-shaped samples; answer, quote and document scores."""
    from longqa.data.schema import read_samples
    from longqa.eval.runner import ResultStore, chat_prompt

    store = ResultStore(out, {"task": "mdqa", "data": str(samples), "n": n,
                              "max_new_tokens": max_new_tokens})  # fmt: skip
    items, docs = [], {}
    for s in list(read_samples(samples))[:n]:
        msgs = [m.model_dump() for m in s.messages or []]
        rel = s.meta["relevant"][0]
        prompt = chat_prompt(tok, msgs[1]["content"], system=msgs[0]["content"])
        body, question = msgs[1]["content"].rsplit("\n\n", 2)[0], msgs[1]["content"]
        docs[s.id] = (split_numbered(body), question.rsplit("\n\n", 1)[-1])
        items.append({"key": s.id, "gold": rel["doc_index"], "depth": rel["depth"],
                      "answer": rel["answer"], "choices": rel["choices"],
                      "source_quote": rel["source_quote"], "num_docs": s.meta["num_docs"],
                      "ids": list(tok(prompt, add_special_tokens=False)["input_ids"])})  # fmt: skip

    def score(it: dict, text: str, new: list[int]) -> dict[str, Any]:
        texts, question = docs[it["key"]]
        exact, fuzzy = quote_recall(text, it["source_quote"] or "", ignore=question)
        pick = choose(text, texts, ignore=question)
        return {
            "answer_hit": word_hit(text, it["answer"], it["choices"]),
            "quote_exact": exact,
            "quote_fuzzy": fuzzy,
            "choice": pick.index,
            "choice_how": pick.how,
            "doc_hit": pick.index == it["gold"],
        }

    return _generate_rows(model, tok, spec, items, store, max_new_tokens, score, "mdqa", progress,
                          batch_size)  # fmt: skip


def eval_needle(model: Any, tok: Any, spec: Any, haystack: Path, out: Path, ev: Any) -> list:
    from longqa.eval.needle import run_needle
    from longqa.eval.runner import ResultStore

    run_needle(model, tok, spec, haystack=haystack, lengths=ev.needle_lengths, depths=ev.depths,
               out_dir=out, batch_size=ev.batch_size, show_progress=False)  # fmt: skip
    return [{**r, "correct": r["score"] >= 1.0} for r in ResultStore(out).rows]


def eval_passkey(model: Any, tok: Any, spec: Any, out: Path, ev: Any, seed: int) -> list:
    from longqa.eval.passkey import run_passkey
    from longqa.eval.runner import ResultStore

    run_passkey(model, tok, spec, lengths=ev.passkey_lengths, trials=ev.passkey_trials,
                depths=tuple(ev.depths), out_dir=out, seed=seed, batch_size=ev.batch_size,
                show_progress=False,
                plot=False)  # fmt: skip
    return list(ResultStore(out).rows)
