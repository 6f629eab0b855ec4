"""Format-independent scoring of held-out W-shaped questions, the same rule for every arm.

Usage (what the ``eval/<arm>`` stage runs on each probe set)::

    rows = eval_probe(model, tok, samples_dir, out / "probe", n=30, max_new_tokens=64)

For each sample the prompt (documents + the first question, in the model's chat template, up to
the start of the assistant's reply) is run once; from that one prefix:

- **document identification by likelihood**: the log-probability of each continuation
  ``"Document k"`` (k = 1 … number of documents), summed over its tokens, lm-eval style
  (``loglikelihood`` of context + continuation, encoded separately); the argmax is the pick;
- **answer options by likelihood**: the same for ``"Answer: <word>"`` over the question's four
  offered words;
- **answer accuracy**: greedy generation (until end of turn, a complete "Answer: <word>", or
  ``max_new_tokens``) scored by
  :func:`longqa.experiment.evals.word_hit` (the gold word in the answer part and no other option);
  the document the reply cites or quotes (:func:`longqa.eval.attribution.choose`) is kept as a
  secondary, form-aware score.

The shared prefix is computed once and its key/value cache is cropped back after each candidate,
so a probe costs one prefill plus a few tokens per candidate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC_CONTINUATION = "Document {k}"
OPTION_CONTINUATION = "Answer: {word}"


def prefill(model: Any, prefix: list[int]) -> tuple[Any, Any]:
    """(key/value cache, log-probabilities of the next token) after ``prefix``."""
    import torch

    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([prefix], device=dev), use_cache=True)
    return out.cache, out.logits[0, -1].float().log_softmax(-1)


def continuation_logprobs(
    model: Any, prefix: list[int], conts: list[list[int]], state: tuple | None = None
) -> list[float]:
    """Summed log-probability of each token list in ``conts`` following ``prefix`` (one prefill,
    or ``state`` from :func:`prefill`; the cache is cropped back to the prefix after each)."""
    import torch

    dev = next(model.parameters()).device
    cache, last = state or prefill(model, prefix)
    scores = []
    with torch.no_grad():
        for cont in conts:
            lp = float(last[cont[0]])
            if len(cont) > 1:
                step = model(torch.tensor([cont[:-1]], device=dev), cache=cache, use_cache=True)
                logp = step.logits[0].float().log_softmax(-1)
                lp += float(sum(logp[j, t] for j, t in enumerate(cont[1:])))
                cache.crop(-(len(cont) - 1))  # back to the prefix
            scores.append(lp)
    return scores


def greedy_from(
    model: Any, prefix: list[int], max_new_tokens: int, stop: set[int],
    state: tuple | None = None, done: Any = None,
) -> list[int]:  # fmt: skip
    """Greedy continuation of ``prefix`` (or of ``state``), stopping at a token of ``stop`` or
    when ``done(new_tokens)`` is true."""
    import torch

    dev = next(model.parameters()).device
    cache, logp = state or prefill(model, prefix)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(logp.argmax())
            if nxt in stop:
                break
            new.append(nxt)
            if done is not None and done(new):
                break
            out = model(torch.tensor([[nxt]], device=dev), cache=cache, use_cache=True)
            logp = out.logits[0, -1]
    return new


def encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def probe_keys(samples: Path) -> set[str]:
    """Ids of the samples of a probe file."""
    from longqa.data.schema import read_samples

    return {s.id for s in read_samples(samples)}


def probe_items(tok: Any, samples: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` samples of a held-out set as probe items (prompt ids, gold, candidates)."""
    from longqa.data.schema import read_samples
    from longqa.eval.attribution import split_numbered
    from longqa.eval.runner import chat_prompt

    items = []
    for s in list(read_samples(samples))[:n]:
        msgs = [m.model_dump() for m in s.messages or []]
        rel = s.meta["relevant"][0]
        user = msgs[1]["content"]
        body, question = user.rsplit("\n\n", 2)[0], user.rsplit("\n\n", 1)[-1]
        items.append({
            "key": s.id, "gold": rel["doc_index"], "depth": rel["depth"],
            "num_docs": s.meta["num_docs"], "answer": rel["answer"], "choices": rel["choices"],
            "question": question, "docs": split_numbered(body),
            "prompt": chat_prompt(tok, user, system=msgs[0]["content"]),
        })  # fmt: skip
    return items


def score_item(model: Any, tok: Any, it: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """Likelihood picks and the generated answer of one probe item (see the module docstring)."""
    from longqa.eval.attribution import choose
    from longqa.experiment.evals import word_hit

    prefix = encode(tok, it["prompt"])
    doc_conts = [encode(tok, DOC_CONTINUATION.format(k=k)) for k in range(1, it["num_docs"] + 1)]
    opt_conts = [encode(tok, OPTION_CONTINUATION.format(word=w)) for w in it["choices"]]
    state = prefill(model, prefix)
    scores = continuation_logprobs(model, prefix, doc_conts + opt_conts, state=state)
    doc_lp, opt_lp = scores[: len(doc_conts)], scores[len(doc_conts) :]
    doc_pick = 1 + max(range(len(doc_lp)), key=doc_lp.__getitem__)
    opt_pick = it["choices"][max(range(len(opt_lp)), key=opt_lp.__getitem__)]
    stop = {t for t in (tok.eos_token_id, tok.get_vocab().get("<|im_end|>")) if t is not None}
    new = greedy_from(model, prefix, max_new_tokens, stop, state=state,
                      done=lambda new: _answered(tok.decode(new, skip_special_tokens=True)))  # fmt: skip
    text = tok.decode(new, skip_special_tokens=True)
    pick = choose(text, it["docs"], ignore=it["question"])
    return {
        "key": it["key"], "gold": it["gold"], "depth": it["depth"], "num_docs": it["num_docs"],
        "doc_pick": doc_pick, "doc_lik_hit": doc_pick == it["gold"],
        "option_pick": opt_pick, "option_lik_hit": opt_pick == it["answer"],
        "answer_hit": word_hit(text, it["answer"], it["choices"]),
        "form_doc": pick.index, "form_doc_hit": pick.index == it["gold"],
        "new_tokens": len(new), "text": text, "doc_logprobs": [round(x, 3) for x in doc_lp],
    }  # fmt: skip


def _answered(text: str) -> bool:
    """The reply has its "Answer: <word>" and a character after the word: nothing left to score."""
    at = text.rfind("Answer:")
    return at >= 0 and re.search(r"\S+\s", text[at + len("Answer:") :]) is not None


def eval_probe(
    model: Any, tok: Any, samples: Path, out: Path, *, n: int, max_new_tokens: int,
    progress: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Score the first ``n`` held-out samples (resumable: rows land in ``out/results.jsonl``)."""
    from longqa.eval.results import ResultStore
    from longqa.eval.runner import progress_bar

    store = ResultStore(out, {"task": "probe", "data": str(samples), "n": n,
                              "max_new_tokens": max_new_tokens})  # fmt: skip
    items = probe_items(tok, samples, n)
    todo = [it for it in items if not store.done(it["key"])]
    if progress and todo:
        bar, task = progress_bar(len(todo), f"probe {Path(out).name}")
        with bar:
            for it in todo:
                store.append(score_item(model, tok, it, max_new_tokens))
                bar.advance(task)
    else:
        for it in todo:
            store.append(score_item(model, tok, it, max_new_tokens))
    keys = {it["key"] for it in items}
    return [r for r in store.rows if r["key"] in keys]
