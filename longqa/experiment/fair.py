"""The fair ablation's report: format-independent metrics per arm, baselines, paired comparisons.

Usage::

    write_fair_report(out, exp, "cpu", stages=..., train=..., data=..., probes=..., cleaned=...,
                      evals=..., command="longqa experiment run …")   # out/results.{json,md}
    pool_runs([Path("runs/s0"), Path("runs/s1")], Path("benchmarks/results/x.md"))  # + x.json

Headline metrics, scored by one rule for every arm and the untrained base (see
:mod:`longqa.experiment.probe`): ``answer`` (generated, the gold word and no other option),
``doc (lik)`` (forced-choice document identification by likelihood), ``option (lik)`` (the four
offered words by likelihood); ``doc (form)`` (the document the reply cites or quotes) is
secondary, with the document each arm picks most often by likelihood (a collapse onto one
position shows there). Baselines in the same table: chance, the training set's most frequent gold
position, the best fixed position chosen on the evaluated items themselves (the ceiling of any
rule that looks at positions only; every arm is also compared with it, paired, on ``doc (lik)``),
and a bag-of-words lexical oracle (the document sharing most question words; the offered word
found in it). Each comparison is paired on the same items: the difference of accuracies with a
paired bootstrap interval (stratified by seed when pooled) and the exact McNemar p-value. A
difference is called *resolved* when the 95% interval excludes 0 and p < 0.05 (no correction for
the number of comparisons; the report says how many were made).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from longqa.core.paths import atomic_write_json, atomic_write_text
from longqa.eval.attribution import normalize_words
from longqa.experiment.stats import fmt, mcnemar_exact, paired_bootstrap, proportion

METRICS = {"answer": "answer_hit", "doc (lik)": "doc_lik_hit", "option (lik)": "option_lik_hit"}
SECONDARY = {"doc (form)": "form_doc_hit", "wrote 'Answer:'": "answered"}
PAIRS = [
    ("paraphrase", "index-detailed"), ("paraphrase", "index-matched"), ("paraphrase", "detailed"),
    ("paraphrase-index", "index-detailed"), ("paraphrase", "paraphrase-index"),
    ("index-matched", "index-detailed"), ("paraphrase", "base"), ("paraphrase-index", "base"),
    ("index-detailed", "base"), ("index-matched", "base"), ("detailed", "base"),
    ("paraphrase", "wrong-quote"), ("wrong-quote", "base"),
]  # fmt: skip
POSITION = "best fixed position"
_TEMPLATE = set(
    "in the reference documents one passage mentions which of these words does that use begins "
    "with uses or and".split()
)


def lexical_oracle(question: str, docs: list[str]) -> int | None:
    """1-based number of the document containing the most distinct question words (None on a
    tie): what a plain bag-of-words search finds without any model."""
    words = {w for w in normalize_words(question) if len(w) >= 4 and w not in _TEMPLATE}
    counts = [len(words & set(normalize_words(d))) for d in docs]
    best = max(counts, default=0)
    return 1 + counts.index(best) if best and counts.count(best) == 1 else None


def oracle_rows(probe_file: str) -> dict[str, dict[str, bool]]:
    """Per sample key: the lexical oracle's document and option hits."""
    from longqa.eval.attribution import split_numbered

    out = {}
    for line in Path(probe_file).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        user = r["messages"][1]["content"]
        question = user.rsplit("\n\n", 1)[-1]
        docs = split_numbered(user.rsplit("\n\n", 2)[0])
        rel = r["meta"]["relevant"][0]
        pick = lexical_oracle(question, docs)
        text = " ".join(normalize_words(docs[pick - 1])) if pick else ""
        found = [w for w in rel["choices"] if re.search(rf"\b{re.escape(w.lower())}\b", text)]
        out[r["id"]] = {"doc": pick == rel["doc_index"], "option": found == [rel["answer"]]}
    return out


def run_record(
    exp: Any, profile: str, *, stages: Any, train: dict, data: dict, probes: dict, cleaned: dict,
    evals: dict, command: str, partial: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The JSON-able record of one run (one seed); ``partial``: arm -> items scored so far, for
    evaluations stopped before their end (their rows are in the tables, marked)."""
    partial = partial or {}
    first = next((n for n in ("paraphrase", *data) if n in data), None)
    positions = Counter(data[first]["gold_positions"]) if first else Counter()
    top = max(positions, key=positions.get) if positions else None
    sets: dict[str, Any] = {}
    for key, info in probes.items():
        oracle = oracle_rows(info["file"])
        arms = {arm: res[key] for arm, res in evals.items() if key in res}
        base_rows = next(iter(arms.values()), [])
        sets[key] = {
            "n": info["n"], "docs_min": info["docs_min"], "docs_mean": info["docs_mean"],
            "chance": {"doc": sum(1 / r["num_docs"] for r in base_rows) / max(1, len(base_rows)),
                       "option": 0.25, "answer": 0.25},
            "majority_position": {"position": top, "doc": sum(str(r["gold"]) == top
                                  for r in base_rows) / max(1, len(base_rows))},
            "oracle": {"doc": [oracle[r["key"]]["doc"] for r in base_rows],
                       "option": [oracle[r["key"]]["option"] for r in base_rows]},
            "arms": {arm: [{**{k: r[k] for k in ("key", "gold", "doc_pick", "new_tokens",
                                                 *METRICS.values(), "form_doc_hit")},
                            "answered": "Answer:" in r.get("text", "")}
                           for r in rows] for arm, rows in arms.items()},
        }  # fmt: skip
    seconds = {n: (stages.record(n) or {}).get("seconds") for n in stages.finished_names()}
    return {
        "experiment": exp.name, "profile": profile, "seed": exp.seed, "split_seed": exp.split.seed,
        "command": command, "question_style": exp.question_style, "cleaned": cleaned,
        "train": train, "train_gold_positions": dict(positions), "sets": sets,
        "stage_seconds": seconds, "total_seconds": round(sum(v or 0 for v in seconds.values()), 1),
        "deferred": [d for d in stages.deferred if d.split("/", 1)[-1] not in partial],
        "partial": partial,
    }  # fmt: skip


def write_fair_report(out: Path, exp: Any, profile: str, **kw: Any) -> dict[str, Any]:
    rec = run_record(exp, profile, **kw)
    atomic_write_json(out / "results.json", rec)
    atomic_write_text(out / "results.md", render([rec]))
    return rec


def pool_runs(runs: list[Path], out: Path) -> dict[str, Any]:
    """Per-seed and pooled tables over finished runs; writes ``out`` (.md) and its .json."""
    from longqa.core.errors import LongqaError

    recs = []
    for r in runs:
        path = Path(r) / "results.json"
        if not path.is_file():
            raise LongqaError(f"{r}: no results.json (the run has not finished)")
        recs.append(json.loads(path.read_text(encoding="utf-8")))
    out = Path(out)
    pooled = {"runs": recs, "comparisons": comparisons(recs)}
    atomic_write_json(out.with_suffix(".json"), pooled)
    atomic_write_text(out.with_suffix(".md"), render(recs))
    return pooled


def _hits(recs: list[dict], key: str, arm: str, metric: str) -> tuple[list[bool], list[int]]:
    """``arm``'s outcomes over the seeds, with the seed index of each."""
    flags, strata = [], []
    for i, rec in enumerate(recs):
        rows = rec["sets"].get(key, {}).get("arms", {}).get(arm, [])
        flags += [bool(r[metric]) for r in rows]
        strata += [i] * len(rows)
    return flags, strata


def best_position(rows: list[dict]) -> tuple[int | None, dict[str, bool]]:
    """The document number that is gold most often among ``rows`` (chosen on these very items,
    so an upper bound for any position-only rule) and its hit per item key."""
    counts = Counter(r["gold"] for r in rows)
    if not counts:
        return None, {}
    k = max(sorted(counts), key=lambda g: counts[g])
    return k, {r["key"]: r["gold"] == k for r in rows}


def _paired(recs: list[dict], key: str, a: str, b: str, metric: str) -> tuple[list, list, list]:
    """Outcomes of ``a`` and ``b`` on the items both were scored on, with their seed index;
    ``b`` may be :data:`POSITION`, the best fixed position of each seed's items."""
    fa, fb, strata = [], [], []
    for i, rec in enumerate(recs):
        arms = rec["sets"].get(key, {}).get("arms", {})
        if b == POSITION:
            hits_b = best_position(next(iter(arms.values()), []))[1]
        else:
            hits_b = {r["key"]: bool(r[metric]) for r in arms.get(b, [])}
        for r in arms.get(a, []):
            if r["key"] in hits_b:
                fa.append(bool(r[metric]))
                fb.append(hits_b[r["key"]])
                strata.append(i)
    return fa, fb, strata


def comparisons(recs: list[dict]) -> list[dict[str, Any]]:
    """Paired differences (a − b) for every pair of arms present, per probe set and metric, then
    every arm against the best fixed position on ``doc (lik)``."""
    out = []

    def add(key: str, a: str, b: str, label: str, paired: tuple[list, list, list]) -> None:
        fa, fb, strata = paired
        if not fa:
            return
        diff = paired_bootstrap(fa, fb, strata=strata)
        test = mcnemar_exact(fa, fb)
        resolved = test["p"] < 0.05 and (diff["lo"] > 0 or diff["hi"] < 0)
        out.append({"set": key, "a": a, "b": b, "metric": label, "diff": diff, **test,
                    "resolved": resolved, "seeds": len(set(strata))})  # fmt: skip

    for key in dict.fromkeys(k for r in recs for k in r["sets"]):
        arms = list(dict.fromkeys(a for r in recs for a in r["sets"].get(key, {}).get("arms", {})))
        for a, b in PAIRS:
            if a in arms and b in arms:
                for label, metric in METRICS.items():
                    add(key, a, b, label, _paired(recs, key, a, b, metric))
        for a in arms:
            add(key, a, POSITION, "doc (lik)", _paired(recs, key, a, POSITION, "doc_lik_hit"))
    return out


def _table(recs: list[dict], key: str) -> list[str]:
    sets = [r["sets"][key] for r in recs if key in r["sets"]]
    n = sum(s["n"] for s in sets)
    cols = [*METRICS, *SECONDARY, "most chosen doc (lik)"]
    lines = [f"| arm (n = {n} unless stated) | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    chance = [sum(s["chance"][m] * s["n"] for s in sets) / max(1, n)
              for m in ("answer", "doc", "option")]  # fmt: skip
    lines.append(
        f"| chance | {chance[0]:.2f} | {chance[1]:.2f} | {chance[2]:.2f} | {chance[1]:.2f} | — | — |"
    )
    maj = sum(s["majority_position"]["doc"] * s["n"] for s in sets) / max(1, n)
    pos = ", ".join(str(s["majority_position"]["position"]) for s in sets)
    lines.append(
        f"| train's most frequent gold position ({pos}) | — | {maj:.2f} | — | {maj:.2f} | — | — |"
    )
    best = [best_position(next(iter(s["arms"].values()), [])) for s in sets]
    bp = proportion([f for _, hits in best for f in hits.values()])
    where = ", ".join(str(k) for k, _ in best)
    lines.append(f"| {POSITION}, chosen on these items ({where}) | — | {fmt(bp)} | — | {fmt(bp)} "
                 "| — | — |")  # fmt: skip
    od = proportion([f for s in sets for f in s["oracle"]["doc"]])
    oo = proportion([f for s in sets for f in s["oracle"]["option"]])
    lines.append(
        f"| lexical oracle (bag of words) | {fmt(oo)} | {fmt(od)} | {fmt(oo)} | — | — | — |"
    )
    for arm in dict.fromkeys(a for s in sets for a in s["arms"]):
        cells = []
        for metric in [*METRICS.values(), *SECONDARY.values()]:
            cells.append(fmt(proportion(_hits(recs, key, arm, metric)[0])))
        picks = Counter(r["doc_pick"] for s in sets for r in s["arms"].get(arm, []))
        top, count = max(sorted(picks.items()), key=lambda kv: kv[1], default=(None, 0))
        cells.append(f"{top} ({count / max(1, sum(picks.values())):.0%})" if top else "—")
        k = len(_hits(recs, key, arm, "answer_hit")[0])
        lines.append(f"| {arm}{'' if k == n else f' (n = {k})'} | " + " | ".join(cells) + " |")
    return lines


def _cmp_lines(cmps: list[dict]) -> list[str]:
    lines = ["| set | a − b | metric | n | difference [95% paired bootstrap] | a-only / b-only | "
             "McNemar p | |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in cmps:
        d = c["diff"]
        lines.append(
            f"| {c['set']} | {c['a']} − {c['b']} | {c['metric']} | {d['n']} | {d['value']:+.2f} "
            f"[{d['lo']:+.2f}, {d['hi']:+.2f}] | {c['n10']} / {c['n01']} | {c['p']:.3f} | "
            f"{'**resolved**' if c['resolved'] else 'unresolved'} |"
        )
    return lines


def render(recs: list[dict]) -> str:
    """Markdown: pooled headline tables and comparisons, then one section per seed."""
    seeds = ", ".join(str(r["seed"]) for r in recs)
    lines = [f"# {recs[0]['experiment']} [{recs[0]['profile']}], seeds {seeds}", ""]
    for r in recs:
        lines.append(f"- seed {r['seed']}: `{r['command']}` ({r['total_seconds'] / 60:.1f} min of "
                     f"stages)")  # fmt: skip
        if r.get("deferred"):
            lines.append(f"  - not run for this seed: {', '.join(r['deferred'])}")
        if r.get("partial"):
            part = ", ".join(f"{a} ({k} items)" for a, k in r["partial"].items())
            lines.append(
                f"  - evaluation stopped before its end (the items scored are used): {part}"
            )
    lines += ["", "Cells: accuracy [95% Wilson interval]. n counts items over the seeds.", ""]
    cmps = comparisons(recs)
    for key in dict.fromkeys(k for r in recs for k in r["sets"]):
        have = ", ".join(str(r["seed"]) for r in recs if key in r["sets"])
        lines += [f"## {key}: pooled over seeds {have}", "", *_table(recs, key), ""]
    resolved = [c for c in cmps if c["resolved"]]
    lines += [f"## Paired comparisons, pooled ({len(cmps)} made; {len(resolved)} resolved)", "",
              *_cmp_lines(cmps), ""]  # fmt: skip
    for r in recs:
        lines += [f"## Seed {r['seed']}", ""]
        c = r["cleaned"]
        lines.append(f"Eval side cleaned before building: {c['exact']} paragraphs found in the "
                     f"training files, {c['near']} near-copies (8-word shingles) and "
                     f"{c.get('sentences', 0)} sentences sharing an 8-word run removed from "
                     f"{c['files']} files; {c['paragraphs']} paragraphs kept.")  # fmt: skip
        lines.append("")
        lines.append("| arm | steps | samples | answer tokens | first → final loss |")
        lines.append("|---|---|---|---|---|")
        for arm, t in r["train"].items():
            lines.append(f"| {arm} | {t['steps']} | {t.get('samples')} | {t.get('answer_tokens')} "
                         f"| {t['first_loss']:.3f} → {t['final_loss']:.3f} |")  # fmt: skip
        lines.append("")
        for key in r["sets"]:
            lines += [f"### {key} (seed {r['seed']})", "", *_table([r], key), ""]
        lines += [*_cmp_lines([c for c in comparisons([r]) if c["b"] != "base"]), ""]
    return "\n".join(lines) + "\n"
