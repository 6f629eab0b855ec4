"""`longqa experiment`: schema, arms that differ only in answer form, the disjoint split, Wilson
intervals, form-aware scoring, stage caching/resume, and the whole pipeline on a tiny model."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from data_builders import ablation
from longqa.core.errors import LongqaError
from longqa.experiment.schema import experiment_from_dict, experiments_dir, load_experiment
from longqa.experiment.split import check_disjoint, materialize, split_corpus
from longqa.experiment.stages import Stages
from longqa.experiment.stats import mean_interval, proportion, wilson

sys.path.insert(0, str(Path(__file__).parent))

SYLL = "ka ri mo tel san vor pel dun lis gar no mi fe tos ran cu bel dor vin ha".split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLL) for _ in range(rng.randint(3, 4)))


def make_corpus(folder: Path, files: int = 12, paras: int = 3, seed: int = 0) -> Path:
    """Files of multi-sentence paragraphs over a private pseudo-word vocabulary per file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        blocks = []
        for p in range(paras):
            sents = []
            for s in range(5):
                words = [_word(rng) for _ in range(8)]
                sents.append(
                    f"{words[0].capitalize()} {' '.join(words[1:])} {f * 100 + p * 10 + s}."
                )
            blocks.append(" ".join(sents))
        (folder / f"file{f:02d}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return folder


def tiny_tree(model: str, corpus: str, **profile) -> dict:
    prof = {
        "model": model,
        "rope": {"method": "none"},
        "budget_minutes": 1,
        "train": {"samples": 3, "target_tokens": 1600, "docs_per_group": 5,
                  "max_doc_tokens": 300, "turns": 2, "steps": 1, "lr": 1e-3,
                  "max_length": 1800, "save_steps": 1},
        "eval": {"n": 2, "mdqa_target_tokens": 1600, "pr_paragraphs": 3, "pr_max_words": 60,
                 "needle_lengths": [600], "passkey_lengths": [300], "depths": [0.1, 0.9],
                 "passkey_trials": 2, "max_new_tokens": 32, "effective_samples": 1,
                 "batch_size": 2},
        "throughput": {"train_tokens_per_s": 1000, "prefill_tokens_per_s": 5000,
                       "decode_tokens_per_s": 100},
    }  # fmt: skip
    prof.update(profile)
    return {
        "name": "tiny-ablation",
        "recipe": "smollm2-135m-yarn16k",
        "corpus": corpus,
        "arms": [{"name": "base", "form": "none"}, {"name": "para", "form": "paraphrase"},
                 {"name": "idx", "form": "index-detailed"}, {"name": "det", "form": "detailed"}],
        "evals": ["passage-retrieval", "mdqa", "needle", "passkey"],
        "profiles": {"cpu": prof},
    }  # fmt: skip


# --------------------------------------------------------------------------------------- schema
def test_shipped_experiments_load():
    files = sorted(experiments_dir().glob("*.yaml"))
    assert files, "no shipped experiments"
    for f in files:
        exp = load_experiment(f)
        assert {"cpu", "gpu"} <= set(exp.profiles)
        forms = [a.form for a in exp.arms]
        assert forms[0] == "none" and {"paraphrase", "index-detailed", "detailed"} <= set(forms)
        assert exp.profile("gpu").eval.n >= 200


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"arms": [{"name": "x", "form": "quote"}]}, "'arms.0.form'"),
        ({"evals": ["mdqa", "rouge"]}, "'evals.1'"),
        ({"seeds": [1]}, "'seeds': unknown key"),
    ],
)
def test_schema_errors_name_file_and_field(patch, field):
    tree = {**tiny_tree("m", "c"), **patch}
    with pytest.raises(LongqaError) as exc:
        experiment_from_dict(tree, "exp.yaml")
    msg = str(exc.value)
    assert msg.startswith("exp.yaml: ") and field in msg and "\n" not in msg


def test_unknown_profile_names_field():
    exp = experiment_from_dict(tiny_tree("m", "c"), "exp.yaml")
    with pytest.raises(LongqaError, match=r"exp.yaml: field 'profiles' has no profile 'tpu'"):
        exp.profile("tpu")


# ---------------------------------------------------------------------------------------- split
def test_split_is_disjoint_seeded_and_guarded(tmp_path):
    corpus = make_corpus(tmp_path / "c", files=10)
    a = split_corpus(corpus, eval_fraction=0.4, seed=3, min_files=4, source="x.yaml")
    b = split_corpus(corpus, eval_fraction=0.4, seed=3, min_files=4, source="x.yaml")
    c = split_corpus(corpus, eval_fraction=0.4, seed=4, min_files=4, source="x.yaml")
    assert a.as_json() == b.as_json() and a.as_json() != c.as_json()
    assert len(a.eval) == 4 and len(a.train) == 6 and not set(a.eval) & set(a.train)
    train, ev = materialize(a, tmp_path / "split")
    assert sorted(p.name for p in ev.iterdir()) == sorted(p.name for p in a.eval)
    held_out = (ev / a.eval[0].name).read_text().split("\n\n")
    check_disjoint(train, {"ev.jsonl: field 'context'": held_out})  # no overlap: passes
    leaked = (train / a.train[0].name).read_text().split("\n\n")[1]
    with pytest.raises(LongqaError, match=r"ev.jsonl: field 'context': an eval text overlaps"):
        check_disjoint(train, {"ev.jsonl: field 'context'": [*held_out, leaked]})
    with pytest.raises(LongqaError, match=r"x.yaml: field 'corpus'.*3 source file"):
        split_corpus(make_corpus(tmp_path / "small", files=3), eval_fraction=0.5, seed=0,
                     min_files=4, source="x.yaml")  # fmt: skip


# ---------------------------------------------------------------------------------------- stats
def test_wilson_matches_known_values():
    # Reference values: statsmodels.stats.proportion.proportion_confint(k, n, method="wilson")
    assert wilson(7, 20) == pytest.approx((0.18117, 0.56711), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-4)
    cell = proportion([True, False, True, True])
    assert cell["value"] == 0.75 and cell["n"] == 4 and cell["lo"] < 0.75 < cell["hi"]
    m = mean_interval([0.0, 1.0] * 50)
    assert m["value"] == 0.5 and 0.39 < m["lo"] < 0.45 and 0.55 < m["hi"] < 0.61


# ---------------------------------------------------------------------------------- attribution
def test_form_aware_choice_and_quote_recall():
    from longqa.eval.attribution import choose, quote_recall, split_numbered

    ctx = ("Paragraph 1: The red fox ran over the quiet hill at dawn today.\n\n"
           "Paragraph 2: A blue whale sang under the cold northern sea for hours.")  # fmt: skip
    paras = split_numbered(ctx)
    assert paras[1].startswith("A blue whale")
    q = 'The original text is: "A blue whale sang under the cold northern sea"'
    assert (choose(q, paras).index, choose(q, paras).how) == (2, "quote")
    assert choose("Paragraph 1", paras).how == "cited"
    assert choose(" 2.", paras).index == 2 and choose("Paragraph 1 ... 2", paras).index == 1
    assert choose("no idea", paras).index is None
    assert quote_recall(q, paras[1]) == (False, pytest.approx(9 / 11))  # 9 of its 11 words
    assert quote_recall(paras[0] + " yes", paras[0])[0] is True


# --------------------------------------------------------------------------- arms and builder
def test_arms_differ_only_in_answer_form(tmp_path):
    from data_builders.paraphrase_mdqa import Options, build
    from longqa.data.schema import read_samples

    corpus = make_corpus(tmp_path / "c", files=8)
    samples = {}
    for form in ("paraphrase", "index-detailed", "detailed", "wrong-quote"):
        build(Options(corpus=str(corpus), out=str(tmp_path / form), generator="extractive",
                      tokenizer="approx", num_samples=4, target_tokens=600, docs_per_group=5,
                      max_doc_tokens=150, turns=2, negative_ratio=0.0, answer_style=form,
                      neutral_questions=True, progress=False))  # fmt: skip
        samples[form] = {s.id: s for s in read_samples(tmp_path / form)}
    assert len(samples["paraphrase"]) >= 3
    assert samples["paraphrase"].keys() == samples["detailed"].keys()
    for sid, ref in samples["paraphrase"].items():
        for form in ("index-detailed", "detailed", "wrong-quote"):
            other = samples[form][sid]
            users = lambda s: [(m.role, m.content) for m in s.messages if m.role != "assistant"]  # noqa: E731
            assert users(other) == users(ref)  # same system prompt, documents and questions
            gold = lambda s: [
                (r["doc_id"], r["doc_index"], r["answer"]) for r in s.meta["relevant"]
            ]  # noqa: E731
            assert gold(other) == gold(ref)
        for m in ref.messages:
            assert "quote" not in m.content.lower() or m.role == "assistant"  # no form asked
        for k, rel in enumerate(ref.meta["relevant"]):
            answers = {f: [m.content for m in samples[f][sid].messages if m.role == "assistant"][k]
                       for f in samples}  # fmt: skip
            assert rel["source_quote"] in answers["paraphrase"]
            assert answers["index-detailed"].startswith(
                f"The relevant text is in Document {rel['doc_index']}"
            )
            assert answers["detailed"] == f"Answer: {rel['answer']}"
            assert all(rel["answer"] in a for a in answers.values())
            # the control copies as many words from another document of the same context
            span = re.match(r'The relevant original text is: "(.*)"\n\nAnswer: ', answers[
                "wrong-quote"], re.S).group(1)  # fmt: skip
            assert len(span.split()) == len(rel["source_quote"].split())
            docs = [m.content for m in ref.messages if m.role == "user"][0]
            gold_doc = re.split(r"Document \d+:\n", docs)[rel["doc_index"]]
            assert span in docs and span not in gold_doc


# --------------------------------------------------------------------------------------- stages
def test_stages_skip_finished_and_restart_changed(tmp_path):
    calls = []

    def work(folder: Path) -> dict:
        calls.append(folder.name)
        (folder / "x.txt").write_text("done")
        return {"ok": len(calls)}

    s1 = Stages(tmp_path)
    assert s1.run("train/a", {"steps": 2}, work) == {"ok": 1}
    s2 = Stages(tmp_path)
    assert s2.run("train/a", {"steps": 2}, work) == {"ok": 1} and s2.skipped == ["train/a"]
    assert calls == ["a"]
    assert s2.run("train/a", {"steps": 3}, work) == {"ok": 2}  # inputs changed: runs again
    assert s2.ran == ["train/a"]


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture
def tiny_model(tmp_path):
    from eval_fixtures import tiny_llama, tiny_tokenizer

    folder = tmp_path / "tiny-model"
    tiny_llama(max_position_embeddings=4096).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_tiny_pipeline_end_to_end_and_resume(tmp_path, tiny_model, monkeypatch):
    from longqa.experiment.run import run_experiment

    corpus = make_corpus(tmp_path / "corpus", files=12)
    exp = experiment_from_dict(tiny_tree(str(tiny_model), str(corpus)), str(tmp_path / "e.yaml"))
    out = tmp_path / "run"
    res = run_experiment(
        exp, "cpu", out, datasets=ablation, progress=False, argv=["experiment", "run"]
    )
    arms = res["results"]
    assert set(arms) == {"base", "para", "idx", "det"}
    for cells in (a["cells"] for a in arms.values()):
        for key in ("pr-verbatim longbench", "pr-keywords form-aware", "mdqa right doc",
                    "mdqa quote exact", "needle", "passkey"):  # fmt: skip
            assert 0 <= cells[key]["lo"] <= cells[key]["hi"] <= 1
        assert cells["mdqa answer"]["n"] == 2 and cells["passkey"]["n"] == 2
    assert set(res["train"]) == {"para", "idx", "det"}
    assert all(t["steps"] == 1 for t in res["train"].values())
    md = (out / "results.md").read_text()
    assert "| para (paraphrase) |" in md and "Wilson" in md
    assert (out / "accuracy_by_depth.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["base"]["cells"]["passkey"]["n"] == 2
    kw = [json.loads(x) for x in (out / "evaldata/pr-keywords/passage_retrieval_en.jsonl")
          .read_text().splitlines()]  # fmt: skip
    assert all(r["input"].startswith("Keywords: ") for r in kw)
    # without --resume an existing run is refused; with it every finished stage is skipped
    with pytest.raises(LongqaError, match="pass --resume"):
        run_experiment(exp, "cpu", out, datasets=ablation, progress=False, argv=[])

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("longqa.experiment.run._train", boom)
    monkeypatch.setattr("longqa.experiment.run._eval_arm", boom)
    again = run_experiment(exp, "cpu", out, datasets=ablation, resume=True, progress=False, argv=[])
    assert again["results"] == res["results"]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_dry_run_prints_plan_and_errors_are_one_line(tmp_path):
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "longqa", "experiment", "run", "paraphrase-ablation"]
    done = subprocess.run([*cmd, "--profile", "gpu", "--dry-run"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train/paraphrase" in done.stderr and "within the profile's budget" in done.stderr
    bad = subprocess.run([*cmd, "--profile", "tpu", "--dry-run"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "field 'profiles'" in bad.stderr


def test_echo_of_the_question_is_not_a_quote():
    from longqa.eval.attribution import choose, quote_recall

    docs = ["Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu.",
            "Nu xi omicron pi rho sigma tau upsilon phi chi psi omega."]  # fmt: skip
    question = (
        'The passage that begins with "Alpha beta gamma delta epsilon zeta…" uses which word?'
    )
    echo = 'The passage that begins with "Alpha beta gamma delta epsilon zeta" uses "mu".'
    assert choose(echo, docs).index == 1  # without the question, the echo looks like a quote
    assert choose(echo, docs, ignore=question).index is None
    real = '"Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu." Answer: mu'
    assert choose(real, docs, ignore=question).index == 1
    assert quote_recall(real, docs[0], ignore=question) == (True, 1.0)
    # fuzzy recall counts only the 6 words the question did not give away: 4 of them quoted
    partial = '"Alpha beta gamma delta epsilon zeta eta theta iota kappa" Answer: mu'
    assert quote_recall(echo, docs[0], ignore=question) == (False, 0.0)
    assert quote_recall(partial, docs[0], ignore=question) == (False, pytest.approx(4 / 6))


def test_llm_abstracts_replace_queries_unless_they_copy(tmp_path):
    from stub_openai_server import StubOpenAIServer, StubReply

    from data_builders.ablation import build_retrieval
    from longqa.core.paths import iter_jsonl
    from longqa.eval.attribution import shares_span, split_numbered

    corpus = make_corpus(tmp_path / "c", files=6)
    exp = experiment_from_dict(tiny_tree("m", str(corpus)), "e.yaml")

    def responder(body: dict, n: int) -> StubReply:
        para = body["messages"][0]["content"].split("\n\n")[1]
        if n % 2:  # odd requests copy the paragraph: must fall back to keywords
            return StubReply(content=para)
        return StubReply(content="A short summary written in other words entirely.")

    with StubOpenAIServer(responder) as server:
        res = build_retrieval(exp, exp.profile("cpu"), corpus, tmp_path / "pr", variant="keywords",
                              base_url=server.url, llm_model="stub")  # fmt: skip
    assert res["query"]["llm"] >= 1 and res["query"]["keywords"] >= 1
    assert sum(res["query"].values()) == res["samples"] == 2
    for _, row in iter_jsonl(res["file"]):
        gold = int(row["answers"][0].split()[-1])
        assert not shares_span(row["input"], split_numbered(row["context"])[gold - 1], 8)
