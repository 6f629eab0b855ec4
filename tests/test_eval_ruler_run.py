"""RULER scoring vs independent formulas, effective context, prompt encoding (one BOS), the
haystack-size search (±1 % of the target), QA data files, and a resumable run on a tiny model."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import tiny_llama, tiny_tokenizer
from typer.testing import CliRunner

from longqa.core.errors import LongqaError
from longqa.eval.ruler import run_ruler, summarize
from longqa.eval.ruler.generators import generator_for
from longqa.eval.ruler.prompt import encode_prompt, fit_sample
from longqa.eval.ruler.qa import read_qa
from longqa.eval.ruler.runner import gen_context, make_items
from longqa.eval.ruler.scoring import (
    effective_context,
    postprocess,
    sample_score,
    string_match_all,
    string_match_part,
)
from longqa.eval.ruler.tasks import TASKS, GenContext
from longqa.eval.ruler.words import word_pool


def test_string_match_all_and_part_by_hand():
    preds = ["The numbers are 123 and 456.", "nothing here", "ABC-def"]
    refs = [["123", "789"], ["1"], ["abc-DEF", "x"]]
    # per sample: 1/2, 0/1, 1/2 → mean 1/3 → 33.33
    assert string_match_all(preds, refs) == 33.33
    # per sample: any hit: 1, 0, 1 → 66.67
    assert string_match_part(preds, refs) == 66.67
    assert string_match_all(["x 1 2 3"], [["1", "2", "3"]]) == 100.0
    assert sample_score("a\x00b", ["a\nb"], "all") == 100.0  # control chars become newlines
    assert postprocess("  \tfoo\x01bar \n") == "foo\nbar"


def test_scores_match_an_independent_reimplementation():
    import random

    rng = random.Random(0)
    alphabet = "abAB12 "
    for _ in range(200):
        preds = ["".join(rng.choices(alphabet, k=12)) for _ in range(3)]
        refs = [
            ["".join(rng.choices(alphabet[:-1], k=2)) for _ in range(rng.randint(1, 3))]
            for _ in range(3)
        ]
        per_all = [
            sum(r.lower() in p.strip().lower() for r in rs) / len(rs)
            for p, rs in zip(preds, refs, strict=True)
        ]
        per_part = [
            max(r.lower() in p.strip().lower() for r in rs)
            for p, rs in zip(preds, refs, strict=True)
        ]
        assert string_match_all(preds, refs) == round(100 * sum(per_all) / 3, 2)
        assert string_match_part(preds, refs) == round(100 * sum(per_part) / 3, 2)


def test_effective_context():
    assert effective_context({4096: 95.0, 8192: 86.0, 16384: 50.0}) == 8192
    assert effective_context({"4096": 85.6, "8192": 85.59}) == 4096  # at the threshold counts
    assert effective_context({4096: 10.0}) == 0
    assert effective_context({4096: 50.0, 8192: 60.0}, threshold=55) == 8192


def test_summarize_table_and_averages():
    rows = [
        {"task": "vt", "length": 4096, "score": 100.0},
        {"task": "vt", "length": 4096, "score": 0.0},
        {"task": "vt", "length": 8192, "score": 40.0},
        {"task": "cwe", "length": 4096, "score": 90.0},
        {"task": "cwe", "length": 8192, "score": 20.0},
    ]
    s = summarize(rows, ["vt", "cwe", "fwe"], [4096, 8192], threshold=60)
    assert s["table"] == {"vt": {"4096": 50.0, "8192": 40.0}, "cwe": {"4096": 90.0, "8192": 20.0}}
    assert s["tasks"] == ["vt", "cwe"]  # fwe had no rows
    assert s["by_length"] == {"4096": 70.0, "8192": 30.0}
    assert s["by_task"] == {"vt": 45.0, "cwe": 55.0}
    assert s["score"] == 50.0 and s["effective_context"] == 4096 and s["metric"] == "score"


class _BosTok:
    """Wraps the tiny tokenizer so it adds a BOS by default and its template writes one too."""

    def __init__(self):
        self.tok = tiny_tokenizer()
        self.bos_token_id = self.tok.convert_tokens_to_ids("<pad>")  # any special id
        self.chat_template = "x"

    def __call__(self, text, add_special_tokens=True):
        ids = self.tok(text.replace("<BOS>", "<pad>"), add_special_tokens=False)["input_ids"]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<BOS><BOS>U: " + messages[0]["content"] + "\nA:"


def test_encode_prompt_one_bos_and_answer_prefix():
    tok = _BosTok()
    ids = encode_prompt(tok, "hello", " The answer is")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert tok.tok.decode(ids[1:]) == "U: hello\nA: The answer is"
    plain = tiny_tokenizer()  # template ends without a space: prefix kept verbatim (no BOS at all)
    ids = encode_prompt(plain, "hi", " Answer:")
    assert plain.decode(ids) == "<|user|>hi<|end|><|assistant|> Answer:"


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe"])
def test_budget_search_fills_the_length_on_tiny_tokenizer(task):
    tok = tiny_tokenizer()
    ctx = GenContext(words=word_pool(None, 2000), length=8192)
    sample, ids, n = fit_sample(tok, TASKS[task], 8192, "0", ctx)
    total = len(ids) + TASKS[task].tokens_to_generate
    assert 0.99 * 8192 <= total <= 8192
    # one more haystack unit would not fit
    gen_more = generator_for(TASKS[task].family)(TASKS[task], n + 1, "0", ctx)
    assert (
        len(encode_prompt(tok, gen_more.input, gen_more.answer_prefix))
        + TASKS[task].tokens_to_generate
        > 8192
    )


def test_too_short_length_is_one_line_error():
    ctx = GenContext(words=word_pool(None, 2000), length=100)
    with pytest.raises(LongqaError, match="length 100 is too short"):
        fit_sample(tiny_tokenizer(), TASKS["niah_single_1"], 100, "0", ctx)


@pytest.mark.model
@pytest.mark.parametrize("length", [8192])
def test_budget_search_within_one_percent_on_smollm2(length, tmp_path):
    from longqa.models.checkpoints import load_tokenizer

    try:
        tok = load_tokenizer("smollm2-135m")
    except Exception as exc:  # the offline model is not installed here
        pytest.skip(f"smollm2-135m tokenizer unavailable: {exc}")
    (tmp_path / "e.txt").write_text(
        " ".join(f"Sentence number {i} talks about startups and essays." for i in range(3000)),
        encoding="utf-8",
    )
    ctx = gen_context(tmp_path, None)
    tasks = [t for t in TASKS if TASKS[t].family != "qa"]
    items, skipped = make_items(tok, tasks, [length], 1, ctx)
    assert not skipped and len(items) == len(tasks)
    for it in items:
        total = len(it["ids"]) + TASKS[it["task"]].tokens_to_generate
        assert 0.99 * length <= total <= length, (it["task"], total)
        assert it["ids"][0] == tok.bos_token_id != it["ids"][1]


def _squad(tmp_path):
    data = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "question": "What is the capital of France?",
                                "answers": [{"text": "Paris"}],
                                "is_impossible": False,
                            },
                            {"question": "Unanswerable?", "answers": [], "is_impossible": True},
                        ],
                    },
                    {"context": "Berlin is in Germany.", "qas": []},
                ],
            },
            {
                "title": "U",
                "paragraphs": [{"context": f"Filler document {i}.", "qas": []} for i in range(30)],
            },
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_qa_squad_gold_document_in_prompt(tmp_path):
    path = _squad(tmp_path)
    data = read_qa("squad", path)
    assert len(data["qas"]) == 1 and data["qas"][0]["outputs"] == ["Paris"]
    ctx = GenContext(words=word_pool(None, 2000), qa_data={"squad": data}, length=1024)
    gen = generator_for("qa")
    s = gen(TASKS["qa_1"], 5, "0", ctx)
    gold = [s.input[a:b] for a, b in s.spans]
    assert len(gold) == 1 and gold[0].endswith("Paris is the capital of France.")
    assert gold[0].startswith("Document ") and s.input.count("Document ") == 5
    assert "Berlin is in Germany." in s.input  # same-article paragraph chosen first
    assert (
        s.input.endswith("Question: What is the capital of France?")
        and s.answer_prefix == " Answer:"
    )


def test_qa_hotpot_and_bad_files(tmp_path):
    rows = [
        {
            "question": "Who?",
            "answer": "Ann",
            "context": [["A", ["Ann wrote it.", " Yes."]], ["B", ["Bob."]]],
        }
    ]
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    data = read_qa("hotpotqa", path)
    assert data["docs"] == ["A\nAnn wrote it. Yes.", "B\nBob."] and data["qas"][0]["context"] == [
        0,
        1,
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(LongqaError, match="bad.json:1: invalid JSON"):
        read_qa("squad", bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(LongqaError, match="not SQuAD format"):
        read_qa("squad", bad)


def test_run_resumes_skips_and_compares(tmp_path):
    from longqa.eval.compare import compare_runs

    model, tok = tiny_llama(max_position_embeddings=2048), tiny_tokenizer()
    notes: list[str] = []
    kw = dict(
        lengths=[1536], tasks="niah_single_1,niah_single_2,qa_1,vt", samples=2, show_progress=False
    )
    s = run_ruler(
        model, tok, None, out_dir=tmp_path / "a", notify=notes.append, max_new_tokens=4, **kw
    )
    assert set(s["skipped"]) == {"niah_single_2", "qa_1"} and len(notes) == 2
    assert s["tasks"] == ["niah_single_1", "vt"] and s["n"] == 4
    rows = [json.loads(x) for x in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {
        f"{t}-L1536-s{i}" for t in ("niah_single_1", "vt") for i in (0, 1)
    }
    for r in rows:
        assert r["score"] == sample_score(r["output"], r["outputs"], "all")
        assert 0.95 * 1536 <= r["prompt_tokens"] + TASKS[r["task"]].tokens_to_generate <= 1536
    assert (
        json.loads((tmp_path / "a" / "summary.json").read_text())["effective_context"]
        == s["effective_context"]
    )
    again = run_ruler(model, tok, None, out_dir=tmp_path / "a", max_new_tokens=4, **kw)
    assert again["table"] == s["table"]
    assert len((tmp_path / "a" / "results.jsonl").read_text().splitlines()) == 4  # nothing reran
    with pytest.raises(LongqaError, match="different settings"):
        run_ruler(
            model, tok, None, out_dir=tmp_path / "a", max_new_tokens=4, **{**kw, "samples": 1}
        )
    run_ruler(model, tok, None, out_dir=tmp_path / "b", max_new_tokens=4, seed=1, **kw)
    info, cmp_rows = compare_runs(tmp_path / "a", tmp_path / "b")
    assert info["tasks"] == ("ruler", "ruler")
    assert [r[0] for r in cmp_rows][:2] == ["score", "n"] and "length 1536" in [
        r[0] for r in cmp_rows
    ]


def test_cli_rejects_bad_tasks_before_loading():
    from longqa.cli.app import app

    result = CliRunner().invoke(
        app, ["eval", "ruler", "--model", "/nonexistent", "--tasks", "vt,bogus"]
    )
    assert result.exit_code != 0 and isinstance(result.exception, LongqaError)
    assert "unknown RULER task 'bogus'" in str(result.exception)


def test_cli_rejects_empty_haystack_before_loading(tmp_path):
    from longqa.cli.app import app

    args = ["eval", "ruler", "--model", "/nonexistent", "--haystack", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LongqaError)
    assert "no text to build a haystack" in str(result.exception)
