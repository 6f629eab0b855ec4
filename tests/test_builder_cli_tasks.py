"""`longqa build-data --task …` for book-summary, paper-summary, paper-qa, long-pretrain and mix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from builder_texts import en_paper, paragraphs, prose, zh_paper
from typer.testing import CliRunner

from longqa.cli.app import app
from longqa.data.schema import read_samples

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str):
    result = CliRunner().invoke(app, ["build-data", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_long_pretrain_and_paper_summary_then_mix(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text(prose("en", 12, 1), encoding="utf-8")
    (corpus / "zh.txt").write_text(prose("zh", 10, 2), encoding="utf-8")
    _run(
        "--task", "long-pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "lp"),
        "--tokenizer", "approx", "--min-words", "500", "--target-tokens", "256",
        "--separator", "<|doc|>", "--upsample", "2", "--opt", "upsample_min_words=1200",
    )  # fmt: skip
    stats = json.loads((tmp_path / "lp" / "stats.json").read_text())
    assert stats["separator"] == "<|doc|>" and stats["upsampled_copies"] == 1
    seqs = list(read_samples(tmp_path / "lp"))
    assert len(seqs) == stats["sequences"] > 0
    assert all(len(s.meta["input_ids"]) == 256 for s in seqs)
    assert "<|doc|>" in "".join(s.text for s in seqs)

    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "a.md").write_text(en_paper(1)[0], encoding="utf-8")
    (papers / "b.md").write_text(zh_paper(2)[0], encoding="utf-8")
    (papers / "c.md").write_text(en_paper(3, abstract=False)[0], encoding="utf-8")
    _run(
        "--task", "paper-summary", "--input", str(papers), "--out", str(tmp_path / "ps"),
        "--tokenizer", "approx",
    )  # fmt: skip
    stats = json.loads((tmp_path / "ps" / "stats.json").read_text())
    assert stats["samples"] == 2 and stats["skipped"] == {"no_abstract": 1}

    _run(
        "--task", "paper-qa", "--input", str(papers), "--out", str(tmp_path / "pqa"),
        "--generator", "extractive", "--tokenizer", "approx", "--opt", "answer_style=quote-first",
        "--no-progress",
    )  # fmt: skip
    assert len(list(read_samples(tmp_path / "pqa"))) == 3

    alpaca = [{"instruction": p, "output": p[:40]} for p in paragraphs("en", 3, 5)]
    (tmp_path / "alpaca.jsonl").write_text("\n".join(json.dumps(a) for a in alpaca) + "\n")
    _run(
        "--task", "mix", "--inputs", f"sum={tmp_path / 'ps'}", "--inputs",
        f"qa={tmp_path / 'pqa'},short={tmp_path / 'alpaca.jsonl'}",
        "--counts", "2,3,1", "--seed", "3", "--out", str(tmp_path / "mix"),
    )  # fmt: skip
    mixed = list(read_samples(tmp_path / "mix"))
    assert sorted(s.meta["mix_source"] for s in mixed) == ["qa"] * 3 + ["short"] + ["sum"] * 2
    assert "| qa |" in (tmp_path / "mix" / "README.md").read_text()


def test_cli_unknown_flag_and_bad_input_are_one_line_errors(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "x.txt").write_text("Chapter 1\nText.\n\nChapter 2\nMore.")
    (books / "x.summary.txt").write_text("A summary.")
    cmd = [sys.executable, "-m", "longqa", "build-data", "--task", "book-summary"]
    run = subprocess.run(
        [*cmd, "--input", str(books), "--out", str(tmp_path / "o"), "--turns", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2 and "--turns" in run.stderr and "book-summary" in run.stderr
    assert "Traceback" not in run.stderr
    ok = subprocess.run(
        [*cmd, "--input", str(books), "--out", str(tmp_path / "o"), "--tokenizer", "approx"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    (sample,) = read_samples(tmp_path / "o")
    assert sample.messages[-1].content == "A summary."


def test_describe_prints_behaviour_and_options():
    from typer.testing import CliRunner

    from longqa.cli.app import app

    res = CliRunner().invoke(app, ["build-data", "--task", "paper-summary", "--describe"])
    assert res.exit_code == 0, res.output
    assert "no_abstract" in res.output and "--min-abstract-words" in res.output
    res = CliRunner().invoke(app, ["build-data", "--task", "paraphrase-mdqa", "--describe"])
    assert (
        "--answer-style" in res.output and "'paraphrase', 'paraphrase-index', 'plain'" in res.output
    )
