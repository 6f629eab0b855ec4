"""Trainer data: formats, assistant-only labels, over-length handling, bad input."""

from __future__ import annotations

import json

import pytest
from train_fixtures import tiny_tokenizer, write_jsonl

from longqa.core.errors import LongqaError
from longqa.data.conversation import IGNORE_INDEX
from longqa.data.sources import load_records
from longqa.train.data import (
    mix_records,
    tokenize_conversation,
    tokenize_pretrain,
    tokenize_sft,
)

MULTI = [
    {"role": "system", "content": "hello"},
    {"role": "user", "content": "what is one"},
    {"role": "assistant", "content": "one two"},
    {"role": "user", "content": "count three"},
    {"role": "assistant", "content": "three four five"},
]


def test_labels_exactly_on_assistant_tokens_of_multi_turn_sample():
    tok = tiny_tokenizer()
    ex = tokenize_conversation(tok, MULTI)
    text = tok.apply_chat_template(MULTI, tokenize=False)
    assert ex.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    toks = tok.convert_ids_to_tokens(ex.input_ids)
    # Independent reference: walk the tokens; a span opens after "<|im_start|> assistant" and
    # closes after the next "<|im_end|>" (included, the model must learn to stop).
    expected, inside = [], False
    for i, t in enumerate(toks):
        if inside:
            expected.append(ex.input_ids[i])
            if t == "<|im_end|>":
                inside = False
        else:
            expected.append(IGNORE_INDEX)
            if t == "assistant" and i > 0 and toks[i - 1] == "<|im_start|>":
                inside = True
    assert ex.labels == expected
    trained = [t for t, lab in zip(toks, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert trained == ["one", "two", "<|im_end|>", "three", "four", "five", "<|im_end|>"]


def test_formats_are_converted_on_load(tmp_path):
    rows = [
        {"id": "a", "task": "t", "messages": MULTI},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]},
        {"instruction": "count", "input": "one", "output": "two"},
        {"text": "the cat sat"},
    ]
    recs = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert recs[0].messages == MULTI
    assert recs[1].messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes"},
    ]
    assert recs[2].messages[0] == {"role": "user", "content": "count\n\none"}
    assert recs[2].messages[1] == {"role": "assistant", "content": "two"}
    assert recs[3].text == "the cat sat" and recs[3].messages is None
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("the dog sat on the mat")
    assert load_records(tmp_path / "docs")[0].text == "the dog sat on the mat"


def test_malformed_line_reports_line_number(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n\n{not json\n")
    with pytest.raises(LongqaError, match=r"bad\.jsonl:3: invalid JSON"):
        load_records(f)
    f.write_text(
        json.dumps({"id": "x", "task": "t", "messages": [{"role": "user", "content": "q"}]})
    )
    with pytest.raises(LongqaError, match=r"bad\.jsonl:1: .*no assistant turn"):
        load_records(f)
    f.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(LongqaError, match=r"bad\.jsonl:1: unrecognised sample"):
        load_records(f)


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(LongqaError, match="dataset not found"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(LongqaError, match="empty"):
        load_records(tmp_path / "empty.jsonl")


def test_overlength_truncate_or_drop_is_counted(tmp_path):
    tok = tiny_tokenizer()
    long = {"role": "assistant", "content": " ".join(["one"] * 40)}
    short = {"role": "assistant", "content": "two"}
    recs = load_records(
        write_jsonl(
            tmp_path / "d.jsonl",
            [
                {"id": str(i), "task": "t", "messages": [MULTI[1], m]}
                for i, m in enumerate([long, short, long])
            ],
        )
    )
    ex, st = tokenize_sft(recs, tok, max_length=20, overlength="truncate")
    assert st.truncated == 2 and len(ex) == 3 and max(len(e) for e in ex) == 20
    ex, st = tokenize_sft(recs, tok, max_length=20, overlength="drop")
    assert st.dropped_overlength == 2 and len(ex) == 1
    with pytest.raises(LongqaError, match="no training examples"):
        tokenize_sft(recs[:1], tok, max_length=20, overlength="drop")


def test_pretrain_splits_long_documents_into_blocks(tmp_path):
    tok = tiny_tokenizer()
    recs = load_records(write_jsonl(tmp_path / "p.jsonl", [{"text": " ".join(["cat"] * 25)}]))
    ex, st = tokenize_pretrain(recs, tok, max_length=10)
    assert st.split == 1 and [len(e) for e in ex] == [10, 10, 6]  # 25 words + EOS
    assert all(e.labels[0] == IGNORE_INDEX and e.labels[1:] == e.input_ids[1:] for e in ex)


def test_mixing_weights_are_respected():
    from longqa.train.data import Record

    a = [Record(text=f"a{i}") for i in range(50)]
    b = [Record(text=f"b{i}") for i in range(50)]
    mixed = mix_records([(a, 3.0), (b, 1.0)], seed=0)
    n_a = sum(r.text.startswith("a") for r in mixed)
    assert n_a == 75 and len(mixed) == 100
    assert mix_records([(a, 3.0), (b, 1.0)], seed=0) == mixed
