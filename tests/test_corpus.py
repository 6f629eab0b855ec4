"""Corpus readers, passage splitting, token counting and the resumable shard writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_builders.corpus import clean_text, read_corpus, split_passages
from data_builders.writer import ShardWriter, depth_histogram, histogram, length_histogram
from longqa.core.errors import LongqaError
from longqa.data.schema import read_samples
from longqa.data.tokens import ApproxTokenCounter, count_messages, get_token_counter

PARA = "Alpha beta gamma delta epsilon. Zeta eta theta iota kappa! Lambda mu nu xi omicron? "


def test_clean_text_removes_control_chars_and_collapses_space():
    raw = "Hello\x00  world\t\t!\r\n\r\n\r\n\r\nNext\u200b line   \n"
    assert clean_text(raw) == "Hello world !\n\nNext line"


def test_folder_of_txt_and_md_dedup_and_min_length(tmp_path: Path):
    (tmp_path / "a.txt").write_text("First document. " * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Title\n\nSecond   document text. " * 5)
    (tmp_path / "dup.txt").write_text("First document. " * 10 + "\n\n")  # same after cleaning
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    corpus = read_corpus(tmp_path, min_chars=20)
    assert sorted(d.id for d in corpus.docs) == ["a.txt", "sub/b.md"]
    assert corpus.stats["duplicates"] == 1 and corpus.stats["too_short"] == 1
    assert "Second document text." in corpus.docs[1].text  # spaces collapsed


def test_jsonl_bad_lines_are_named_skipped_and_counted(tmp_path: Path):
    f = tmp_path / "c.jsonl"
    rows = [
        json.dumps({"body": {"text": PARA * 3}}),
        "{not json",
        json.dumps({"other": 1}),
        json.dumps({"body": {"text": 42}}),
        json.dumps({"body": {"text": PARA * 4}}),
    ]
    f.write_text("\n".join(rows) + "\n")
    corpus = read_corpus(f, field="body.text")
    assert len(corpus.docs) == 2 and corpus.stats["bad_lines"] == 3
    assert corpus.problems[0].startswith(f"{f}:2: invalid JSON")
    assert any(p.startswith(f"{f}:4: field 'body.text' is int") for p in corpus.problems)
    with pytest.raises(LongqaError, match=r"c\.jsonl:2: invalid JSON"):
        read_corpus(f, field="body.text", strict=True)


def test_undecodable_text_file_names_line(tmp_path: Path):
    (tmp_path / "ok.txt").write_text(PARA * 2)
    (tmp_path / "bad.txt").write_bytes(b"line one\nline two \xff\xfe\n")
    corpus = read_corpus(tmp_path)
    assert len(corpus.docs) == 1 and corpus.stats["bad_lines"] == 1
    assert corpus.problems[0].startswith(f"{tmp_path / 'bad.txt'}:2: not UTF-8")


def test_parquet_and_saved_dataset(tmp_path: Path):
    import datasets

    ds = datasets.Dataset.from_dict({"content": [PARA * 2, PARA * 3, PARA * 2]})
    ds.to_parquet(str(tmp_path / "p.parquet"))
    corpus = read_corpus(tmp_path / "p.parquet", field="content")
    assert len(corpus.docs) == 2 and corpus.stats["duplicates"] == 1
    ds.save_to_disk(str(tmp_path / "saved"))
    corpus2 = read_corpus(tmp_path / "saved", field="content")
    assert [d.text for d in corpus2.docs] == [d.text for d in corpus.docs]
    with pytest.raises(LongqaError, match="no column 'text'"):
        read_corpus(tmp_path / "saved")


def test_long_documents_split_at_boundaries_without_loss():
    counter = ApproxTokenCounter()
    paragraphs = [PARA * k for k in (1, 2, 9, 1, 3)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    parts = split_passages(text, 60, counter)
    assert len(parts) > 3
    assert all(counter.count(p) <= 60 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())  # nothing lost or added
    assert all(p.rstrip()[-1] in ".!?" for p in parts)  # cut at sentence ends


def test_read_corpus_splits_and_ids(tmp_path: Path):
    (tmp_path / "long.txt").write_text("\n\n".join([PARA * 4] * 10))
    corpus = read_corpus(tmp_path, max_doc_tokens=100)
    assert [d.id for d in corpus.docs][:2] == ["long.txt/p0", "long.txt/p1"]
    assert all(d.n_tokens <= 100 for d in corpus.docs) and corpus.stats["split"] == 1


def test_missing_corpus_is_one_line_error(tmp_path: Path):
    with pytest.raises(LongqaError, match="corpus not found"):
        read_corpus(tmp_path / "nope")
    with pytest.raises(LongqaError, match="no corpus files"):
        read_corpus(tmp_path)


def test_approx_counter_and_messages():
    c = get_token_counter("approx")
    assert c.count("Hello, world!") == 4
    assert c.count("我们走了") == 4
    assert c.count("internationalization") == 1 + 19 // 6
    msgs = [{"role": "user", "content": "Hello, world!"}, {"role": "assistant", "content": "ok"}]
    assert count_messages(msgs, c) == 4 + 1 + 2 * 4


def test_writer_shards_resume_torn_line_and_no_duplicates(tmp_path: Path):
    def sample(i: int) -> dict:
        return {"id": f"s{i}", "task": "t", "messages": [{"role": "assistant", "content": "x"}]}

    with ShardWriter(tmp_path, shard_size=3) as w:
        for i in range(7):
            assert w.write(sample(i))
        assert not w.write(sample(2))  # duplicate id ignored
        partial = tmp_path / ".data.partial.jsonl"
        assert partial.exists() and len(w.shards()) == 2
    # simulate a kill: a partial file with one good line and one torn line
    partial.write_text(json.dumps(sample(7)) + "\n" + '{"id": "s8", "ta')
    with ShardWriter(tmp_path, shard_size=3) as w:
        assert w.done_ids() == {f"s{i}" for i in range(8)}
        for i in range(12):
            w.write(sample(i))
    ids = [s.id for s in read_samples(tmp_path)]
    assert sorted(ids) == sorted(f"s{i}" for i in range(12)) and len(ids) == 12
    assert not partial.exists()


def test_histograms():
    h = histogram([0, 1, 5, 9.99, 10, 11, -1], [0, 5, 10])
    assert h["counts"] == [2, 3] and h["below"] == 1 and h["above"] == 1
    assert sum(depth_histogram([0.0, 0.5, 1.0])["counts"]) == 3
    lh = length_histogram([100, 150, 200], bins=2, lo=100, hi=200)
    assert lh["edges"] == [100, 150, 200] and lh["counts"] == [1, 2]
