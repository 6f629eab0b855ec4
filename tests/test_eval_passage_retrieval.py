"""LongBench passage retrieval: the scoring rule, prompts, truncation, bad input, the builder."""

from __future__ import annotations

import json
import textwrap

import pytest
from eval_fixtures import ESSAYS, template_tokenizer, tiny_llama, tiny_tokenizer

from data_builders.longbench_pr import Options, build, extractive_summary
from longqa.core.errors import LongqaError
from longqa.eval import passage_retrieval as pr

# Cases written from LongBench's rule: the id N of "Paragraph N"/"段落N" in the ground truth;
# score = (numbers in the prediction equal to N) / (numbers in the prediction); none → 0.
CASES = [
    ("段落3，段落5", "段落3", "zh", 0.5),
    ("段落3", "段落3", "zh", 1.0),
    ("答案是段落12", "段落1", "zh", 0.0),
    ("我不知道", "段落3", "zh", 0.0),
    ("Paragraph 7", "Paragraph 7", "en", 1.0),
    ("Paragraph 2, Paragraph 7, Paragraph 9", "Paragraph 7", "en", 1 / 3),
    ("Paragraph 17", "Paragraph 7", "en", 0.0),
    ("I cannot tell.", "Paragraph 7", "en", 0.0),
    ("Paragraph 7 (not Paragraph 7.)", "Paragraph 7", "en", 1.0),
]


@pytest.mark.parametrize("pred,truth,lang,expected", CASES)
def test_retrieval_score_follows_longbench_rule(pred, truth, lang, expected):
    assert pr.retrieval_score(pred, truth, lang) == pytest.approx(expected)


def test_summary_reports_x100_and_accuracy():
    rows = [
        {"score": 1.0, "length": 100},
        {"score": 0.5, "length": 5000},
        {"score": 0.0, "length": 9000},
    ]
    s = pr.summarize(rows)
    assert s["score"] == 50.0 and s["accuracy"] == pytest.approx(1 / 3)
    assert s["by_length"] == {"0-4k": 100.0, "4-8k": 50.0, "8k+": 0.0}


def _row(**kw):
    row = {
        "input": "abs",
        "context": "Paragraph 1: x",
        "answers": ["Paragraph 1"],
        "length": 3,
        "_id": "a",
    }
    row.update(kw)
    return row


def test_missing_field_names_line_and_field(tmp_path):
    bad = _row()
    del bad["context"]
    path = tmp_path / "pr.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LongqaError, match=r"pr\.jsonl:2: field 'context' missing"):
        pr.read_longbench(path)
    path.write_text(json.dumps(_row(answers="Paragraph 1")) + "\n")
    with pytest.raises(LongqaError, match=r":1: field 'answers' should be list"):
        pr.read_longbench(path)


def test_prompt_uses_longbench_template_and_chat_template():
    tok = tiny_tokenizer()
    context = "\n\n".join(f"Paragraph {i}: text {i}." for i in range(1, 31))
    p = pr.build_prompt(tok, _row(input="THE ABSTRACT", context=context), "en", 10_000)
    assert p.startswith("<|user|>Here are 30 paragraphs from Wikipedia, along with an abstract.")
    assert "The following is an abstract.\n\nTHE ABSTRACT\n\n" in p
    assert p.endswith('"Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: <|end|><|assistant|>')
    assert pr.PROMPTS["zh"].endswith("答案是：")


def test_prompt_states_the_real_number_of_paragraphs(tmp_path):
    out = tmp_path / "pr"
    build(Options(corpus=_corpus(tmp_path), out=out, num_samples=2, num_paragraphs=5))
    row = pr.read_longbench(out / "passage_retrieval_en.jsonl")[0]
    assert "Here are 5 paragraphs" in pr.build_prompt(tiny_tokenizer(), row, "en", 10_000)


@pytest.mark.parametrize("kind", ["llama2", "llama3", "chatml", "base"])
def test_prompt_ids_have_exactly_one_bos(kind):
    tok = template_tokenizer(kind)
    (item,) = pr.make_items(tok, [_row()], "en", 200)
    ids = item["ids"]
    if tok.bos_token_id is None:
        assert tok.convert_ids_to_tokens(ids[0]) == "<|im_start|>"
    else:  # the base tokenizer has no template: LongBench's tokenizer(prompt) gives it a BOS
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def _longbench_ids(tok, prompt: str, max_length: int) -> list[int]:
    """LongBench pred.py's steps for a model without build_chat, written from its description:
    count ``tokenizer(prompt)`` (special tokens included); when longer than ``max_length``, decode
    the first and last ``int(max_length / 2)`` of those ids without special tokens and join them;
    the model then sees ``tokenizer(prompt)`` of the result."""
    ids = tok(prompt)["input_ids"]
    if len(ids) > max_length:
        half = int(max_length / 2)
        prompt = tok.decode(ids[:half], skip_special_tokens=True) + tok.decode(
            ids[-half:], skip_special_tokens=True
        )
    return tok(prompt)["input_ids"]


@pytest.mark.parametrize("kind", ["base", "chatml"])
def test_truncation_counts_the_bos_as_longbench_does(kind):
    tok = template_tokenizer(kind)
    tok.chat_template = None  # pred.py's route for a model without a chat prompt
    context = "\n\n".join(f"Paragraph {i}: some words of paragraph {i}." for i in range(1, 31))
    row = _row(context=context)
    raw = pr.PROMPTS["en"].format(count=30, context=context, input=row["input"])
    plain = len(tok(raw, add_special_tokens=False)["input_ids"])
    for budget in (300, 301, plain, plain + 1):
        (item,) = pr.make_items(tok, [row], "en", budget)
        assert item["ids"] == _longbench_ids(tok, raw, budget), budget
    (item,) = pr.make_items(tok, [row], "en", 300)
    assert len(item["ids"]) == 300  # a BOS tokenizer used to get 301 (BOS + 2 x 150)
    # a budget equal to the text's own length: with the BOS counted the prompt is one over, cut
    (item,) = pr.make_items(tok, [row], "en", plain)
    assert plain > 300 and len(item["ids"]) <= plain + (kind == "chatml")
    assert (tok.decode(item["ids"], skip_special_tokens=True) == raw) == (kind == "chatml")


@pytest.mark.parametrize(
    "window,budget,expected",
    [(4096, "longbench", 3500), (8192, "longbench", 7500), (32768, "longbench", 31500),
     (16384, "longbench", 15500), (32768, "window", 32768 - 96)],
)  # fmt: skip
def test_budget_rules(window, budget, expected):
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=window))
    assert pr.default_max_length(model, None, budget) == expected
    with pytest.raises(LongqaError, match="--budget must be one of"):
        pr.default_max_length(model, None, "paper")


def test_summary_records_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "MAX_NEW_TOKENS", 2)
    path = tmp_path / "pr.jsonl"
    path.write_text(json.dumps(_row()) + "\n")
    tok, model = tiny_tokenizer(), tiny_llama(max_position_embeddings=4096)
    kw = dict(data=path, show_progress=False)
    s = pr.run_passage_retrieval(model, tok, None, out_dir=tmp_path / "a", budget="longbench", **kw)
    assert s["budget"] == "longbench" and s["max_length"] == 3500
    s = pr.run_passage_retrieval(model, tok, None, out_dir=tmp_path / "b", max_length=100, **kw)
    assert s["budget"] == "explicit" and s["max_length"] == 100
    assert json.loads((tmp_path / "b/summary.json").read_text())["budget"] == "explicit"


def test_language_from_rows_before_file_name(tmp_path):
    assert pr.detect_lang([_row(language="en")], tmp_path / "passage_retrieval_zh.jsonl") == "en"
    assert pr.detect_lang([_row(dataset="passage_retrieval_zh")], tmp_path / "x_en.jsonl") == "zh"
    assert pr.detect_lang([_row()], tmp_path / "passage_retrieval_zh.jsonl") == "zh"
    assert pr.detect_lang([_row()], tmp_path / "data.jsonl") == "en"


def test_middle_truncation_keeps_both_ends():
    tok = tiny_tokenizer()
    text = "HEAD " + "filler words " * 200 + "TAIL"
    out = pr.truncate_middle(tok, text, 60)
    assert out.startswith("HEAD") and out.endswith("TAIL")
    assert abs(len(tok(out, add_special_tokens=False)["input_ids"]) - 60) <= 2
    assert pr.truncate_middle(tok, "short", 60) == "short"


def _corpus(tmp_path):
    if ESSAYS.is_dir():
        return ESSAYS
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(40):
        para = " ".join(f"Topic{i} sentence {j} has words about topic{i} things." for j in range(6))
        (d / f"{i}.txt").write_text(para + "\n\n" + para.replace("Topic", "Subject"))
    return d


def test_builder_writes_longbench_rows_with_the_abstract_from_the_answer(tmp_path):
    out = tmp_path / "pr"
    stats = build(Options(corpus=_corpus(tmp_path), out=out, num_samples=4, num_paragraphs=5))
    rows = pr.read_longbench(out / "passage_retrieval_en.jsonl")  # valid LongBench format
    assert len(rows) == 4 == stats["samples"]
    assert json.loads((out / "stats.json").read_text())["samples"] == 4
    for r in rows:
        n = int(r["answers"][0].split()[1])
        paras = r["context"].split("\n\n")
        assert len(paras) == 5 and paras[n - 1].startswith(f"Paragraph {n}: ")
        for sent in r["input"].split(". "):  # extractive: its sentences come from that paragraph
            assert sent.rstrip(".") in paras[n - 1]


def test_builder_length_counts_input_and_context(tmp_path):
    from data_builders.text import count_words

    out = tmp_path / "pr"
    build(Options(corpus=_corpus(tmp_path), out=out, num_samples=3, num_paragraphs=4))
    for r in pr.read_longbench(out / "passage_retrieval_en.jsonl"):
        assert r["length"] == count_words(r["input"]) + count_words(r["context"])


def test_builder_defaults_work_on_text_without_blank_lines(tmp_path):
    """Hard-wrapped essays whose paragraph breaks were lost: one block of text per file."""
    corpus = tmp_path / "wrapped"
    corpus.mkdir()
    for i in range(8):
        words = " ".join(
            f"Essay {i} point {j} is that founders{j % 7} should talk to users{j % 5} early."
            for j in range(120)
        )
        (corpus / f"{i}.txt").write_text(textwrap.fill(words, 70))
    stats = build(Options(corpus=corpus, out=tmp_path / "o", num_samples=2))
    assert stats["paragraphs_per_sample"] == 30 and stats["paragraph_pool"] >= 30


@pytest.mark.skipif(not ESSAYS.is_dir(), reason="shared essays corpus not present")
def test_builder_defaults_work_on_the_essays(tmp_path):
    stats = build(Options(corpus=ESSAYS, out=tmp_path / "o", num_samples=2))
    assert stats["paragraph_pool"] >= 100
    row = pr.read_longbench(tmp_path / "o" / "passage_retrieval_en.jsonl")[0]
    assert pr.paragraph_count(row["context"], "en") == 30


def test_builder_needs_enough_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("One short paragraph. Two sentences.")
    with pytest.raises(LongqaError, match="need 30"):
        build(Options(corpus=tmp_path, out=tmp_path / "o", min_words=2))


def test_extractive_summary_picks_salient_sentences_in_order():
    para = "Cats purr. Cats and dogs play with cats. The weather is mild today. Dogs like cats."
    assert extractive_summary(para, 2) == "Cats and dogs play with cats. Dogs like cats."


def test_run_on_built_set_and_resume(tmp_path):
    out = tmp_path / "pr"
    build(Options(corpus=_corpus(tmp_path), out=out, num_samples=2, num_paragraphs=3))
    tok, model = tiny_tokenizer(), tiny_llama()
    kw = dict(data=out / "passage_retrieval_en.jsonl", out_dir=tmp_path / "run", max_length=300)
    s = pr.run_passage_retrieval(model, tok, None, show_progress=False, **kw)
    assert s["n"] == 2 and s["metric"] == "score" and s["dataset"] == "passage_retrieval_en"
    rows = [json.loads(x) for x in (tmp_path / "run/results.jsonl").read_text().splitlines()]
    from longqa.eval.runner import chat_prompt

    template = len(tok(chat_prompt(tok, ""), add_special_tokens=False)["input_ids"])
    assert all(r["prompt_tokens"] <= 300 + template + 4 for r in rows)  # truncated, then chat
    assert [r["score"] for r in rows] == [
        pr.sample_score(r["output"], r["answers"], "en") for r in rows
    ]
    s2 = pr.run_passage_retrieval(model, tok, None, show_progress=False, **kw)
    assert s2 == json.loads((tmp_path / "run/summary.json").read_text())
