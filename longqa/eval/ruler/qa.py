"""RULER's QA tasks: ``qa_1`` (SQuAD format) and ``qa_2`` (HotpotQA format) among distractors.

The user supplies the data as local files (nothing is downloaded): SQuAD-format JSON
(``{"data": [{"paragraphs": [{"context", "qas": [{"question", "answers": [{"text"}],
"is_impossible"}]}]}]}``) or HotpotQA-format JSON (a list of ``{"question", "answer", "context":
[[title, [sentences]]]}``). A sample is one answerable question with its gold documents, padded
with distractor documents (same-article paragraphs first for SQuAD, then random ones) up to the
haystack size, shuffled, numbered "Document i:"; scored with ``string_match_part``.

Usage::

    from longqa.eval.ruler.qa import read_qa
    data = read_qa("squad", "dev-v2.0.json")   # → {"qas": [...], "docs": [...]}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.eval.ruler.tasks import FAMILIES, GenContext, RulerSample, TaskSpec, fill, shift

DOCUMENT = "Document {i}:\n{document}"


def _load_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise LongqaError(f"QA data not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def read_squad(path: str | Path) -> dict[str, Any]:
    """Answerable SQuAD questions with their paragraph (``context``) and same-article paragraphs."""
    data = _load_json(path)
    try:
        articles = data["data"]
        docs = sorted({p["context"] for a in articles for p in a["paragraphs"]})
        index = {d: i for i, d in enumerate(docs)}
        qas = []
        for a in articles:
            siblings = [index[p["context"]] for p in a["paragraphs"]]
            for p in a["paragraphs"]:
                here = index[p["context"]]
                for q in p["qas"]:
                    if q.get("is_impossible") or not q["answers"]:
                        continue
                    qas.append(
                        {
                            "query": q["question"],
                            "outputs": [x["text"] for x in q["answers"]],
                            "context": [here],
                            "more_context": [i for i in siblings if i != here],
                        }
                    )
    except (KeyError, TypeError) as exc:
        raise LongqaError(f"{path}: not SQuAD format (missing field {exc})") from None
    return {"qas": qas, "docs": docs}


def read_hotpotqa(path: str | Path) -> dict[str, Any]:
    """HotpotQA questions; each context paragraph becomes the document ``title\\ntext``."""
    data = _load_json(path)
    try:
        docs = sorted({f"{t}\n{''.join(s)}" for d in data for t, s in d["context"]})
        index = {d: i for i, d in enumerate(docs)}
        qas = [
            {
                "query": d["question"],
                "outputs": [d["answer"]],
                "context": [index[f"{t}\n{''.join(s)}"] for t, s in d["context"]],
                "more_context": [],
            }
            for d in data
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise LongqaError(f"{path}: not HotpotQA format ({exc})") from None
    return {"qas": qas, "docs": docs}


def read_qa(dataset: str, path: str | Path) -> dict[str, Any]:
    data = read_squad(path) if dataset == "squad" else read_hotpotqa(path)
    if not data["qas"]:
        raise LongqaError(f"{path}: no answerable questions")
    return data


def generate(spec: TaskSpec, n_haystack: int, seed: str, ctx: GenContext) -> RulerSample:
    """Question ``seed``-chosen, with ``n_haystack`` documents (gold ones included)."""
    name = spec.knobs["dataset"]
    data = ctx.qa_data.get(name)
    if data is None:
        raise LongqaError(f"{spec.name}: no {name} data given")
    qas, docs = data["qas"], data["docs"]
    rng = random.Random(seed)
    q = qas[rng.randrange(len(qas))]
    gold, more = list(q["context"]), list(q["more_context"])
    n = max(n_haystack, len(gold))
    if n - len(gold) <= len(more):
        chosen = gold + rng.sample(more, n - len(gold))
    else:
        taken = set(gold + more)
        rest = [i for i in range(len(docs)) if i not in taken]
        chosen = gold + more + rng.sample(rest, min(len(rest), n - len(gold) - len(more)))
    rng.shuffle(chosen)
    pieces, spans, pos = [], [], 0
    for i, d in enumerate(chosen):
        piece = DOCUMENT.format(i=i + 1, document=docs[d])
        if d in gold:
            spans.append((pos, pos + len(piece)))
        pieces.append(piece)
        pos += len(piece) + 2
    fam = FAMILIES["qa"]
    text, offset = fill(fam.template, "\n\n".join(pieces), query=q["query"])
    return RulerSample(
        input=text,
        answer_prefix=fam.answer_prefix,
        outputs=q["outputs"],
        spans=shift(spans, offset),
        meta={"query": q["query"], "docs": len(chosen)},
    )
