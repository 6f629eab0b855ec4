"""Bring-your-own data: every supported format and file layout trains on the same assistant labels
as the equivalent messages; detection is reported; bad rows are one-line errors or counted."""

from __future__ import annotations

import gzip
import json

import pytest
from train_fixtures import tiny_tokenizer, write_jsonl

from longqa.core.errors import LongqaError
from longqa.data.conversation import IGNORE_INDEX
from longqa.data.formats import convert_row
from longqa.data.sources import load_dataset_records
from longqa.train.data import tokenize_conversation, tokenize_pretrain, tokenize_sft

SYSTEM = "hello world"
TURNS = [("what is the color of the sky", "the sky is blue"), ("count one two", "three four five")]
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": TURNS[0][0]},
    {"role": "assistant", "content": TURNS[0][1]},
    {"role": "user", "content": TURNS[1][0]},
    {"role": "assistant", "content": TURNS[1][1]},
]
SHAREGPT_SYSTEM_FIELD = {
    "system": SYSTEM,
    "conversations": [
        {"from": f, "value": v} for q, a in TURNS for f, v in (("human", q), ("gpt", a))
    ],
}
SHAREGPT_SYSTEM_TURN = {
    "conversations": [{"from": "system", "value": SYSTEM}, *SHAREGPT_SYSTEM_FIELD["conversations"]]
}
ALPACA = {
    "system": SYSTEM,
    "history": [list(TURNS[0])],
    "instruction": TURNS[1][0],
    "input": "",
    "output": TURNS[1][1],
}
OPENAI = {
    "messages": [
        {"role": "developer", "content": SYSTEM},
        *({"role": m["role"], "content": m["content"], "name": "x"} for m in MESSAGES[1:]),
    ]
}


def _write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _layouts(tmp_path):
    """(path, expected format) for each hand-written file holding the conversation twice."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    plain = {"messages": MESSAGES}
    out = [
        (write_jsonl(tmp_path / "chat.jsonl", [plain, plain]), "messages"),
        (_write_json(tmp_path / "chat.json", [plain, plain]), "messages"),
        (write_jsonl(tmp_path / "share_sys.jsonl", [SHAREGPT_SYSTEM_FIELD] * 2), "sharegpt"),
        (write_jsonl(tmp_path / "share_turn.jsonl", [SHAREGPT_SYSTEM_TURN] * 2), "sharegpt"),
        (_write_json(tmp_path / "alpaca.json", [ALPACA, ALPACA]), "alpaca"),
        (write_jsonl(tmp_path / "alpaca.jsonl", [ALPACA, ALPACA]), "alpaca"),
        (write_jsonl(tmp_path / "openai.jsonl", [OPENAI, OPENAI]), "openai"),
    ]
    lines = (json.dumps(plain) + "\n") * 2
    gz = tmp_path / "chat.jsonl.gz"
    gz.write_bytes(gzip.compress(lines.encode()))
    zst = tmp_path / "chat.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    out += [(gz, "messages"), (zst, "messages")]
    pq.write_table(pa.Table.from_pylist([SHAREGPT_SYSTEM_TURN] * 2), tmp_path / "share.parquet")
    out.append((tmp_path / "share.parquet", "sharegpt"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([ALPACA, ALPACA]).save_to_disk(str(saved))
    out.append((saved, "alpaca"))
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    write_jsonl(hub / "data" / "train.jsonl", [plain, plain])
    (hub / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train.jsonl\n---\n# a dataset\n"
    )
    out.append((hub, "messages"))
    return out


def test_every_format_tokenizes_to_the_labels_of_the_equivalent_messages(tmp_path):
    tok = tiny_tokenizer()
    reference = tokenize_conversation(tok, MESSAGES)
    assert sum(t != IGNORE_INDEX for t in reference.labels) == 9  # two replies + two <|im_end|>
    for path, fmt in _layouts(tmp_path):
        loaded = load_dataset_records(path)
        assert [r.format for r in loaded.records] == [fmt, fmt], path
        assert all(r.messages is not None for r in loaded.records)
        plain = [
            [{k: m[k] for k in ("role", "content")} for m in r.messages] for r in loaded.records
        ]
        assert plain == [MESSAGES, MESSAGES], path
        examples, _ = tokenize_sft(loaded.records, tok, max_length=64)
        for ex in examples:
            assert ex.input_ids == reference.input_ids and ex.labels == reference.labels, path


def test_detection_is_reported_per_file_and_forced_formats_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": MESSAGES}] * 3)
    assert load_dataset_records(path).describe() == ["data: chat.jsonl → messages, 3 rows"]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": MESSAGES}, ALPACA, ALPACA])
    assert load_dataset_records(mixed).describe() == [
        "data: mixed.jsonl → alpaca 2, messages 1, 3 rows"
    ]
    with pytest.raises(
        LongqaError, match=r"mixed\.jsonl:1: field 'instruction': expected a non-empty"
    ):
        load_dataset_records(mixed, "alpaca")
    with pytest.raises(LongqaError, match="unknown data format 'chatml'"):
        load_dataset_records(mixed, "chatml")


def test_ids_are_optional_and_come_from_a_content_hash():
    a = convert_row({"messages": MESSAGES}, "auto", "f:1")
    again = convert_row({"messages": [dict(m) for m in MESSAGES]}, "auto", "f:9")
    other = convert_row({"messages": MESSAGES[:3]}, "auto", "f:2")
    assert a.id == again.id and a.id.startswith("messages-") and len(a.id) == len("messages-") + 12
    assert other.id != a.id
    assert convert_row({"id": "mine", "task": "t", "messages": MESSAGES}).id == "mine"


def test_text_files_and_folders_are_pretraining_documents(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# the cat\n\nthe cat sat on the mat")
    (docs / "sub" / "b.txt").write_text("the dog sat")
    (docs / "empty.txt").write_text("  \n")
    loaded = load_dataset_records(docs)
    assert [r.text for r in loaded.records] == [
        "# the cat\n\nthe cat sat on the mat",
        "the dog sat",
    ]
    assert {r.format for r in loaded.records} == {"text"}
    tok = tiny_tokenizer()
    examples, _ = tokenize_pretrain(loaded.records[1:], tok, max_length=64)
    ids = tok("the dog sat", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert examples[0].input_ids == ids and examples[0].labels == [IGNORE_INDEX, *ids[1:]]
    # a folder with row files reads those and leaves its text files (a dataset card) alone
    write_jsonl(docs / "rows.jsonl", [{"messages": MESSAGES}])
    assert [r.format for r in load_dataset_records(docs).records] == ["messages"]


BAD_ROWS = [
    ({"messages": MESSAGES}, None),
    ("{not json", r"bad\.jsonl:2: invalid JSON"),
    ({"messages": [{"role": "robot", "content": "beep"}]}, r"bad\.jsonl:3: field 'messages\.0\.role': unknown role 'robot'"),
    ({"conversations": []}, r"bad\.jsonl:4: field 'conversations': empty conversation"),
    ({"instruction": "count", "output": 3}, r"bad\.jsonl:5: field 'output': expected a string"),
    ({"messages": MESSAGES[:2]}, r"bad\.jsonl:6: field 'messages': no assistant turn"),
]  # fmt: skip


def test_bad_rows_are_one_line_errors_or_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r, _ in BAD_ROWS))
    with pytest.raises(LongqaError, match=BAD_ROWS[1][1]):
        load_dataset_records(path)
    for i, (row, expected) in enumerate(BAD_ROWS[2:], 3):
        good = json.dumps({"messages": MESSAGES})
        path.write_text("\n".join([good] * (i - 1) + [json.dumps(row)]))  # the bad row on line i
        with pytest.raises(LongqaError, match=expected) as err:
            load_dataset_records(path)
        assert "\n" not in str(err.value)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r, _ in BAD_ROWS))
    loaded = load_dataset_records(path, skip_bad_rows=True)
    assert len(loaded.records) == 1
    assert loaded.skipped == {
        "bad_line": 1,
        "unknown_role": 1,
        "empty": 1,
        "bad_alpaca": 1,
        "no_answer": 1,
    }
    lines = loaded.describe()
    summary = next(i for i, line in enumerate(lines) if "skipped 5 bad rows" in line)
    firsts = lines[summary + 1 :]
    assert len(firsts) == 5 and all(line.startswith("  first ") for line in firsts)
    assert any(f"first bad_line: {path}:2: invalid JSON" in line for line in firsts)
    assert any(f"first no_answer: {path}:6: field 'messages'" in line for line in firsts)
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in loaded.skips] == ["2", "3", "4", "5", "6"]


def test_overlength_error_names_the_row_or_is_skipped_and_counted(tmp_path):
    tok = tiny_tokenizer()
    long = {"messages": [MESSAGES[1], {"role": "assistant", "content": " ".join(["one"] * 40)}]}
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": MESSAGES}, long, long])
    records = load_dataset_records(path).records
    with pytest.raises(
        LongqaError, match=r"d\.jsonl:2: field 'messages': \d+ tokens, over max_length 40"
    ):
        tokenize_sft(records, tok, max_length=40, overlength="error")
    examples, stats = tokenize_sft(
        records, tok, max_length=40, overlength="error", skip_bad_rows=True
    )
    assert len(examples) == 1 and stats.skipped_rows == {"overlength": 2}


def test_openai_weight_zero_turn_is_context_not_target():
    tok = tiny_tokenizer()
    row = {"messages": [*MESSAGES[:2], {**MESSAGES[2], "weight": 0}, *MESSAGES[3:]]}
    rec = convert_row(row, "auto", "f:1")
    assert rec.format == "openai"
    ex = tokenize_conversation(tok, rec.messages)
    trained = tok.convert_ids_to_tokens([t for t in ex.labels if t != IGNORE_INDEX])
    assert trained == ["three", "four", "five", "<|im_end|>"]
    assert ex.input_ids == tokenize_conversation(tok, MESSAGES).input_ids


def test_data_docs_list_every_format_with_an_example_row_of_that_format():
    from pathlib import Path

    from longqa.data.formats import FORMATS

    readme = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `") and "{" in line:
            name, example = line.split("|")[1].strip(" `"), line.split("|")[2]
            rows[name] = json.loads(example[example.index("`") + 1 : example.rindex("}") + 1])
    assert sorted(rows) == sorted(FORMATS)
    for name, row in rows.items():
        assert convert_row(row, "auto", "README").format == name


def test_undecodable_lines_are_bad_rows_and_line_separators_inside_strings_are_kept(tmp_path):
    odd = {"messages": [{"role": "user", "content": "a\u2028b"}, MESSAGES[2]]}
    path = tmp_path / "odd.jsonl"
    path.write_bytes(json.dumps(odd, ensure_ascii=False).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(LongqaError, match=r"odd\.jsonl:2: not UTF-8"):
        load_dataset_records(path)
    loaded = load_dataset_records(path, skip_bad_rows=True)
    assert loaded.records[0].messages[0]["content"] == "a\u2028b"
    assert loaded.skipped == {"bad_line": 1}
