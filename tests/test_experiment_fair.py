"""The fair paraphrase ablation: questions without a copied run, likelihood scoring against an
independent computation, paired statistics against hand values, the cleaned split for every seed,
the token-matched control, the pieces of the gpu profile, and a tiny run end to end."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

from data_builders import ablation
from longqa.core.errors import LongqaError
from longqa.experiment.schema import experiment_from_dict, load_experiment
from longqa.experiment.stats import mcnemar_exact, paired_bootstrap

sys.path.insert(0, str(Path(__file__).parent))

from test_experiment import make_corpus, tiny_tree  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "paraphrase-ablation.yaml"


# ------------------------------------------------------------------------------- the YAML file
def test_shipped_file_has_every_arm_and_a_matched_control():
    exp = load_experiment(SHIPPED)
    forms = {a.name: a.form for a in exp.arms}
    assert forms == {"base": "none", "paraphrase": "paraphrase",
                     "paraphrase-index": "paraphrase-index", "index-detailed": "index-detailed",
                     "detailed": "detailed", "index-matched": "index-detailed",
                     "wrong-quote": "wrong-quote"}  # fmt: skip
    assert next(a for a in exp.arms if a.name == "index-matched").match_tokens_of == "paraphrase"
    cpu = exp.for_profile("cpu")
    assert cpu.evals == ["probe", "probe-xcorpus"] and exp.question_style == "scattered"
    assert exp.profile("cpu").eval.min_docs >= 8 and exp.profile("gpu").eval.n >= 200


def test_matched_arm_needs_an_unmatched_arm_of_its_form():
    tree = tiny_tree("m", "c")
    tree["arms"] = [{"name": "p", "form": "paraphrase"},
                    {"name": "m", "form": "index-detailed", "match_tokens_of": "p"}]  # fmt: skip
    with pytest.raises(LongqaError, match="unmatched arm of form 'index-detailed'"):
        experiment_from_dict(tree, "exp.yaml")


def test_gpu_dry_run_lists_pieces_of_at_most_eight_minutes():
    from longqa.experiment.plan import make_plan

    plan = make_plan(load_experiment(SHIPPED), "gpu")
    assert plan["pieces"] and all(p["seconds"] <= 8 * 60 for p in plan["pieces"])
    pieced = [s for p in plan["pieces"] for s in p["stages"]]
    heavy = [s["stage"] for s in plan["stages"] if s["stage"].split("/")[0] in ("train", "eval")]
    assert pieced == heavy  # every training and eval stage in exactly one piece, in order


def test_only_selects_stage_names_or_folders():
    from longqa.experiment.stages import selected

    assert selected("eval/paraphrase", ["eval/paraphrase"])
    assert not selected("eval/paraphrase-index", ["eval/paraphrase"])  # a name, not a prefix
    assert selected("eval/paraphrase-index", ["train/base", "eval/"])


# ------------------------------------------------------------------------- no lexical giveaway
@pytest.fixture(scope="module")
def essays():
    from longqa.core.paths import shared_essays

    found = shared_essays()
    if found is None:
        pytest.skip("the shared essays are absent")
    return found


def _exp(corpus: Path, **prof) -> object:
    tree = tiny_tree("smollm2-135m", str(corpus), **prof)
    tree["profiles"]["cpu"]["train"].update(target_tokens=448, docs_per_group=10,
                                            max_doc_tokens=40, max_length=640)  # fmt: skip
    tree["profiles"]["cpu"]["eval"].update(n=6, mdqa_target_tokens=448, min_docs=8)
    return experiment_from_dict(tree, "exp.yaml")


def test_scattered_questions_share_no_five_word_run_with_the_gold_document(essays, tmp_path):
    from longqa.eval.attribution import shares_span, split_numbered

    exp = _exp(essays)
    res = ablation.build_mdqa_eval(exp, exp.profile("cpu"), essays, tmp_path / "p",
                                   question_style="scattered")  # fmt: skip
    rows = [json.loads(x) for x in Path(res["file"]).read_text().splitlines()]
    assert len(rows) == 6 and res["docs_min"] >= 8
    for r in rows:
        user = r["messages"][1]["content"]
        question = user.rsplit("\n\n", 1)[-1]
        gold = r["meta"]["relevant"][0]
        doc = split_numbered(user.rsplit("\n\n", 2)[0])[gold["doc_index"] - 1]
        assert not shares_span(question, doc, 5) and "mentions" in question
        assert gold["answer"] in gold["choices"] and gold["answer"].lower() in doc.lower()
    # the old opening-words question is exactly what the guard refuses
    prefix = ablation.build_mdqa_eval(exp, exp.profile("cpu"), essays, tmp_path / "q",
                                      question_style="prefix")  # fmt: skip
    old = [json.loads(x) for x in Path(prefix["file"]).read_text().splitlines()]
    with pytest.raises(LongqaError, match="shares a run of 5 words"):
        ablation.assert_no_giveaway(old, where="q")


# ---------------------------------------------------------------------- likelihood and probe
def test_continuation_logprobs_match_a_full_forward_per_candidate():
    import torch
    from eval_fixtures import tiny_llama

    from longqa.experiment.probe import continuation_logprobs, greedy_from

    model = tiny_llama(max_position_embeddings=256)
    model.eval()
    rng = random.Random(0)
    prefix = [rng.randrange(5, 200) for _ in range(17)]
    conts = [[7], [8, 9], [10, 11, 12], [8, 13]]
    got = continuation_logprobs(model, prefix, conts)
    for cont, lp in zip(conts, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prefix + cont])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        want = sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(cont))
        assert lp == pytest.approx(want, abs=1e-4)
    # greedy decoding from the cache equals argmax decoding with full forwards
    new = greedy_from(model, prefix, 5, stop=set())
    seq = list(prefix)
    for _ in range(5):
        with torch.no_grad():
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert new == seq[len(prefix) :]


def test_lexical_oracle_finds_the_document_with_most_question_words():
    from longqa.experiment.fair import lexical_oracle

    docs = ["The river flooded the harbour in 1911.", "Markets opened early.", "Rivers run."]
    q = 'In the reference documents, one passage mentions "harbour" and "1911". Which one?'
    assert lexical_oracle(q, docs) == 1
    assert lexical_oracle('one passage mentions "nothing"', docs) is None


# ---------------------------------------------------------------------------------- statistics
def test_mcnemar_exact_matches_the_binomial_test_by_hand():
    a = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5  # 8 a-only, 2 b-only, 10 concordant
    b = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 5
    res = mcnemar_exact(a, b)
    # scipy.stats.binomtest(2, 10, 0.5).pvalue = 2 * (1 + 10 + 45) / 1024
    assert (res["n10"], res["n01"]) == (8, 2) and res["p"] == pytest.approx(112 / 1024)
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0
    assert mcnemar_exact([True] * 6, [False] * 6)["p"] == pytest.approx(2 / 64)
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_interval_of_the_difference():
    a, b = [1, 1, 0, 1] * 10, [0, 1, 0, 1] * 10
    res = paired_bootstrap(a, b, seed=1)
    assert res["value"] == pytest.approx(0.25) and res["n"] == 40
    se = math.sqrt(0.25 * 0.75 / 40)  # the differences are 0/1 with mean 0.25
    assert res["lo"] == pytest.approx(0.25 - 1.96 * se, abs=0.05)
    assert res["hi"] == pytest.approx(0.25 + 1.96 * se, abs=0.05)
    same = paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (same["lo"], same["hi"]) == (0.0, 0.0)
    strat = paired_bootstrap([1, 1, 0, 0], [0, 0, 0, 0], strata=[0, 0, 1, 1])
    assert strat["lo"] == strat["hi"] == 0.5  # within each seed the difference is constant


# ------------------------------------------------------------------------ every seed builds
def test_every_split_seed_cleans_and_passes_the_guard(essays, tmp_path):
    from longqa.experiment.run import _check_held_out
    from longqa.experiment.split import (
        check_disjoint,
        clean_eval_side,
        materialize,
        split_corpus,
    )

    for seed in range(4):
        split = split_corpus(essays, eval_fraction=0.5, seed=seed, min_files=4, source="x")
        train, ev = materialize(split, tmp_path / f"s{seed}")
        counts = clean_eval_side(train, ev)
        assert counts["paragraphs"] > 20 and counts["near"] + counts["exact"] > 0
        texts = [p for f in ev.iterdir() for p in f.read_text().split("\n\n")]
        check_disjoint(train, {"ev": texts})  # nothing left that the guard would refuse
        # nor any piece a builder may cut: every 12-word window of the eval side is its own
        words = " ".join(texts).split()
        pieces = [" ".join(words[i : i + 12]) for i in range(0, len(words) - 12, 3)]
        check_disjoint(train, {"pieces": pieces})
        if seed == 1:  # the seed whose uncleaned split aborted the run
            raw = [p for f in split.eval for p in f.read_text().split("\n\n")]
            with pytest.raises(LongqaError, match="overlaps the training documents"):
                check_disjoint(train, {"ev": raw})
            exp = _exp(essays)
            res = ablation.build_mdqa_eval(exp, exp.profile("cpu"), ev, tmp_path / "p1",
                                           question_style="scattered")  # fmt: skip
            _check_held_out(train, {"retrieval": {}, "probe": res["file"]})


# ---------------------------------------------------------------------- token-matched control
def test_matched_control_trains_on_at_least_the_paraphrase_answer_tokens(essays, tmp_path):
    from longqa.experiment.run import _matched_samples

    exp = _exp(essays)
    tree = exp.model_dump()
    tree["arms"] = [{"name": "p", "form": "paraphrase"}, {"name": "i", "form": "index-detailed"},
                    {"name": "m", "form": "index-detailed", "match_tokens_of": "p"}]  # fmt: skip
    exp = experiment_from_dict({**tree, "profiles": {"cpu": exp.profile("cpu").model_dump()}})
    prof = exp.profile("cpu")
    res = {a.name: ablation.build_arm_data(exp, prof, essays, tmp_path / a.name, a.form)
           for a in exp.arms[:2]}  # fmt: skip
    n = _matched_samples(exp, prof, exp.arms[2], res)
    assert n > prof.train.samples  # quotes make the paraphrase answers longer
    matched = ablation.build_arm_data(exp, prof, essays, tmp_path / "m", "index-detailed", n)
    ref, per = res["p"]["assistant_tokens"], res["i"]["assistant_tokens"] / res["i"]["samples"]
    assert ref <= matched["assistant_tokens"] <= ref + 2 * per
    assert res["p"]["assistant_tokens"] > res["i"]["assistant_tokens"]


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_probe_run_with_a_matched_arm_in_pieces(tmp_path, monkeypatch):
    from eval_fixtures import tiny_llama, tiny_tokenizer

    from longqa.experiment.fair import pool_runs
    from longqa.experiment.run import run_experiment

    model = tmp_path / "tiny-model"
    tiny_llama(max_position_embeddings=4096).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    corpus = make_corpus(tmp_path / "corpus", files=12)
    tree = tiny_tree(str(model), str(corpus))
    tree["arms"] = [{"name": "base", "form": "none"}, {"name": "paraphrase", "form": "paraphrase"},
                    {"name": "index-detailed", "form": "index-detailed"},
                    {"name": "index-matched", "form": "index-detailed",
                     "match_tokens_of": "paraphrase"}]  # fmt: skip
    tree["evals"], tree["question_style"] = ["probe"], "prefix"
    tree["profiles"]["cpu"]["eval"].update(effective_samples=0)
    exp = experiment_from_dict(tree, str(tmp_path / "e.yaml"))
    out = tmp_path / "run"
    first = run_experiment(exp, "cpu", out, datasets=ablation, progress=False, argv=[],
                           only=["train/paraphrase", "eval/base", "eval/paraphrase"])  # fmt: skip
    assert "train/index-detailed" in first["deferred"]  # a partial report names what is left
    assert set(first["sets"]["probe"]["arms"]) == {"base", "paraphrase"}
    assert "not run for this seed: " in (out / "results.md").read_text()
    first_copy = tmp_path / "first"
    first_copy.mkdir()
    (first_copy / "results.json").write_text((out / "results.json").read_text())
    res = run_experiment(exp, "cpu", out, datasets=ablation, progress=False, argv=[], resume=True)
    assert set(res["sets"]["probe"]["arms"]) == {"base", "paraphrase", "index-detailed",
                                                 "index-matched"}  # fmt: skip
    t = res["train"]
    assert t["index-matched"]["samples"] > t["index-detailed"]["samples"]
    assert t["index-matched"]["steps"] > t["index-detailed"]["steps"]
    pooled = pool_runs([first_copy, out], tmp_path / "pooled.md")
    by_pair = {(c["a"], c["b"], c["metric"]): c for c in pooled["comparisons"]}
    assert by_pair[("paraphrase", "base", "answer")]["seeds"] == 2  # both seeds have both arms
    assert by_pair[("paraphrase", "index-detailed", "answer")]["seeds"] == 1
    assert "resolved" in (tmp_path / "pooled.md").read_text()


def test_cli_eval_and_seed_options_replace_the_file_values(tmp_path):
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "longqa", "experiment", "run", "paraphrase-ablation", "--dry-run"]
    done = subprocess.run([*cmd, "--eval", "probe", "--seed", "3"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "probe sets ['probe']" in done.stderr and "probe-xcorpus" not in done.stderr
    bad = subprocess.run([*cmd, "--eval", "rouge"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)  # fmt: skip
    assert bad.returncode != 0 and "evals" in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_comparisons_pair_items_by_key_within_each_seed():
    from longqa.experiment.fair import comparisons

    def rows(flags: str, keys: str) -> list[dict]:
        return [{"key": k, "answer_hit": f == "1", "doc_lik_hit": f == "1", "gold": 1,
                 "option_lik_hit": False} for f, k in zip(flags, keys, strict=True)]  # fmt: skip

    s0 = {"probe": {"arms": {"paraphrase": rows("1110", "abcd"), "base": rows("000", "abc")}}}
    s1 = {"probe": {"arms": {"paraphrase": rows("01", "ab"), "base": rows("11", "ba")}}}
    got = {c["metric"]: c for c in comparisons([{"sets": s0}, {"sets": s1}]) if c["b"] == "base"}
    ans = got["answer"]  # item d has no base row: left out; seed 1 pairs b with b, a with a
    assert ans["diff"]["n"] == 5 and (ans["n10"], ans["n01"]) == (3, 1) and ans["seeds"] == 2
    assert ans["diff"]["value"] == pytest.approx((3 - 1) / 5)


def test_best_fixed_position_is_a_paired_baseline_for_every_arm():
    from longqa.experiment.fair import POSITION, best_position, comparisons, render

    def rows(golds: str, picks: str) -> list[dict]:
        return [{"key": f"k{i}", "gold": int(g), "doc_pick": int(p), "doc_lik_hit": g == p,
                 "answer_hit": False, "option_lik_hit": False, "form_doc_hit": False,
                 "answered": False} for i, (g, p) in enumerate(zip(golds, picks, strict=True))]  # fmt: skip

    assert best_position(rows("3443", "1111"))[0] == 3  # a tie goes to the lower number
    k, hits = best_position(rows("2552", "1111"))
    assert k == 2 and [hits[f"k{i}"] for i in range(4)] == [True, False, False, True]
    # 'index' always picks 5: right on items 1 and 2, where the fixed position 2 is wrong
    sets = {"probe": {"n": 4, "chance": {"doc": 0.25, "option": 0.25, "answer": 0.25},
                      "majority_position": {"position": "2", "doc": 0.5},
                      "oracle": {"doc": [True] * 4, "option": [True] * 4},
                      "arms": {"base": rows("2552", "1111"), "index": rows("2552", "5555")}}}  # fmt: skip
    got = {c["a"]: c for c in comparisons([{"sets": sets}]) if c["b"] == POSITION}
    assert set(got) == {"base", "index"}
    assert (got["index"]["n10"], got["index"]["n01"]) == (2, 2) and got["index"]["diff"]["n"] == 4
    assert (got["base"]["n10"], got["base"]["n01"]) == (0, 2)
    rec = {"experiment": "x", "profile": "cpu", "seed": 0, "command": "c", "total_seconds": 60,
           "cleaned": {"exact": 0, "near": 0, "files": 0, "paragraphs": 1}, "train": {},
           "sets": sets}  # fmt: skip
    md = render([rec])
    assert "| best fixed position, chosen on these items (2) | — | 0.50 [" in md
    assert "| index | " in md and "| 5 (100%) |" in md  # the arm's most chosen document
