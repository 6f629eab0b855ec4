"""Data files as other tools write them: BOMs, compression under any name, CSV/TSV tables and
folders, Parquet with a ``messages`` column, ``datasets`` failures, ``--data PATH:WEIGHT`` errors,
rows without a user turn, and every skipped row's location."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys

import pytest
from train_fixtures import write_jsonl

from longqa.core.errors import LongqaError
from longqa.data.sources import load_dataset_records
from longqa.train.phases import parse_data_arg

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PAIRS = [("What is 2+2?", "4"), ('Say "hi", then\na newline', "hi,\nthere")]


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _messages(loaded) -> list:
    return [r.messages for r in loaded.records]


def test_utf8_bom_jsonl_and_json_are_read(tmp_path):
    lines = "".join(json.dumps(CHAT) + "\n" for _ in range(2))
    (tmp_path / "bom.jsonl").write_text(lines, encoding="utf-8-sig")  # as Windows tools write it
    (tmp_path / "bom.json").write_text(json.dumps([CHAT, CHAT]), encoding="utf-8-sig")
    for name in ("bom.jsonl", "bom.json"):
        loaded = load_dataset_records(tmp_path / name)
        assert _messages(loaded) == [CHAT["messages"]] * 2
        assert loaded.describe() == [f"data: {name} (UTF-8 BOM) → messages, 2 rows"]


def test_compression_is_found_by_magic_bytes_whatever_the_name(tmp_path):
    import zstandard

    lines = "".join(json.dumps(CHAT) + "\n" for _ in range(3)).encode()
    with gzip.open(tmp_path / "gz.jsonl", "wb") as fh:  # gzip output named .jsonl
        fh.write(lines)
    (tmp_path / "zst.jsonl").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "named.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    for name, how in (("gz.jsonl", "gzip"), ("zst.jsonl", "zstd"), ("named.jsonl.zst", "zstd")):
        loaded = load_dataset_records(tmp_path / name)
        assert loaded.describe() == [f"data: {name} ({how}) → messages, 3 rows"]
    (tmp_path / "broken.jsonl").write_bytes(gzip.compress(lines)[:20])
    with pytest.raises(LongqaError, match=r"broken\.jsonl: gzip data that cannot be decompressed"):
        load_dataset_records(tmp_path / "broken.jsonl")


def _write_table(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:  # as csv.writer / pandas write it
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_and_tsv_files_map_common_column_names(tmp_path):
    csv_file = _write_table(tmp_path / "qa.csv", ["prompt", "response"], PAIRS)
    loaded = load_dataset_records(csv_file)
    assert _messages(loaded) == [_chat(q, a) for q, a in PAIRS]
    assert loaded.describe() == ["data: qa.csv → columns, 2 rows"]
    assert [r.source for r in loaded.records] == [f"{csv_file}:2", f"{csv_file}:3"]
    tsv = _write_table(tmp_path / "qa.tsv", ["id", "question", "answer"],
                       [[i, q.replace("\n", " "), a] for i, (q, a) in enumerate(PAIRS)], "\t")  # fmt: skip
    assert [m[1]["content"] for m in _messages(load_dataset_records(tsv))] == ["4", "hi,\nthere"]
    alpaca = _write_table(tmp_path / "a.csv", ["instruction", "input", "output"],
                          [["Add", "1+1", "2"], ["Greet", "", "Hello"]])  # fmt: skip
    loaded = load_dataset_records(alpaca)
    assert [r.format for r in loaded.records] == ["alpaca", "alpaca"]
    assert _messages(loaded)[1] == _chat("Greet", "Hello")
    other = _write_table(tmp_path / "o.csv", ["q", "a", "sys"], [["Hi", "Hello", "Be brief."]])
    with pytest.raises(LongqaError, match=r"o\.csv:2: unrecognised sample \(fields: a, q, sys\)"):
        load_dataset_records(other)
    loaded = load_dataset_records(other, columns="q,a,sys")
    assert _messages(loaded) == [
        [{"role": "system", "content": "Be brief."}, *_chat("Hi", "Hello")]
    ]
    with pytest.raises(LongqaError, match=r"o\.csv:2: field 'answer': missing or empty"):
        load_dataset_records(other, columns=["q", "answer"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "longqa", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_csv_folder_with_readme_rst_is_read_or_refused_in_one_line(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "README.rst").write_text("My data\n=======\n\nQuestions and answers.\n")
    _write_table(folder / "data.csv", ["question", "answer"], PAIRS)
    loaded = load_dataset_records(folder)
    assert _messages(loaded) == [_chat(q, a) for q, a in PAIRS]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "README.rst").write_text("Some columns\n")
    _write_table(bad / "data.csv", ["title", "body"], [["a", "b"]])
    res = _cli("data", "inspect", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    why = (
        f"{bad / 'data.csv'}:2: unrecognised sample (fields: body, title); expected 'messages', "
        "'text', 'conversations', 'instruction'+'output' or prompt/response columns "
        "(--data-columns USER,ASSISTANT)"
    )
    assert res.stderr.strip().splitlines() == [f"error: {why}"]
    res = _cli("data", "inspect", str(bad), "--skip-bad-rows")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {bad}: no usable samples: 1 row skipped (first: {why})"
    ]


def test_datasets_failures_are_one_line_naming_the_folder(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/missing.jsonl\n---\n"
    )
    with pytest.raises(LongqaError, match=rf"^{hub}: not readable as a `datasets` load_dataset "
                       r"folder \(\w+") as err:  # fmt: skip
        load_dataset_records(hub)
    assert "\n" not in str(err.value)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_info.json").write_text("{not json")
    with pytest.raises(LongqaError, match=rf"^{saved}: not readable as a `datasets` save_to_disk"):
        load_dataset_records(saved)


def test_parquet_with_a_messages_column_is_messages_not_openai(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [  # as pandas / datasets write it: extra columns, struct keys of every row (nulls)
        {"prompt_id": "a", "messages": [{"role": "user", "content": "Hi", "name": "ann"},
                                        {"role": "assistant", "content": "Hello"}]},
        {"prompt_id": "b", "messages": CHAT["messages"]},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows[1:]), tmp_path / "plain.parquet")
    loaded = load_dataset_records(tmp_path / "plain.parquet")
    assert loaded.describe() == ["data: plain.parquet → messages, 1 row"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "named.parquet")
    loaded = load_dataset_records(tmp_path / "named.parquet")
    assert [r.format for r in loaded.records] == ["openai", "messages"]  # a real `name` is OpenAI
    assert loaded.records[1].messages == CHAT["messages"]


def test_data_weight_errors_name_the_weight(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [CHAT])
    with pytest.raises(LongqaError, match=r"--data .*chat\.jsonl:abc: the weight 'abc' after ':' "
                       r"is not a number"):  # fmt: skip
        parse_data_arg(f"{data}:abc")
    with pytest.raises(LongqaError, match=r"the weight '0' after ':' must be > 0"):
        parse_data_arg(f"{data}:0")
    with pytest.raises(LongqaError, match=r"the weight 'nan' after ':' must be > 0"):
        parse_data_arg(f"{data}:nan")
    assert parse_data_arg(f"{data}:0.5").weight == 0.5
    odd = write_jsonl(tmp_path / "v:2.jsonl", [CHAT])  # a ':' that is part of the name
    assert parse_data_arg(str(odd)).path == str(odd)
    res = _cli("train", "--recipe", "smollm2-135m-yarn16k", "--data", f"{data}:abc")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: --data {data}:abc: the weight 'abc' after ':' is not a number "
        f"(PATH[:WEIGHT], e.g. {data}:0.5)"
    )


def test_rows_without_a_user_turn_are_warned_and_counted(tmp_path):
    only = {"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, only, only])
    loaded = load_dataset_records(path)
    assert len(loaded.records) == 3 and loaded.no_user == [f"{path}:2", f"{path}:3"]
    assert loaded.describe()[1] == (
        f"warning: {path}: 2 rows without a user turn (first: {path}:2); trained as given"
    )


def test_a_folder_of_many_files_is_described_in_one_line(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}")
    write_jsonl(tmp_path / "few" / "a.jsonl", [CHAT]) if (
        tmp_path / "few"
    ).mkdir() is None else None
    loaded = load_dataset_records(tmp_path)  # row files win over text files in a folder
    assert loaded.describe() == ["data: a.jsonl → messages, 1 row"]
    (tmp_path / "few" / "a.jsonl").unlink()
    assert load_dataset_records(tmp_path).describe() == [
        f"data: {tmp_path} (6 files) → text 6, 6 rows"
    ]


def test_a_hub_download_folder_reads_its_train_split_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# A chat set\n")  # no configs
    test_row = {"messages": _chat("held out", "never trained")}
    for split, rows in (("train", [CHAT, CHAT]), ("test", [test_row]), ("validation", [test_row])):
        pq.write_table(
            pa.Table.from_pylist(rows), tmp_path / "data" / f"{split}-00000-of-00001.parquet"
        )
    loaded = load_dataset_records(tmp_path)
    assert _messages(loaded) == [CHAT["messages"]] * 2
    assert loaded.describe() == [
        "data: train-00000-of-00001.parquet → messages, 2 rows",
        f"data: {tmp_path}: train split only (test 1 file, validation 1 file left out)",
    ]
    (tmp_path / "data" / "train-00000-of-00001.parquet").unlink()  # no train split: all is read
    assert len(load_dataset_records(tmp_path).records) == 2
