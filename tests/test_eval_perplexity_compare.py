"""Perplexity by length (sliding windows), run comparison, and the `longqa eval` CLI's input checks."""

from __future__ import annotations

import json
import math

import pytest
from eval_fixtures import tiny_llama, tiny_tokenizer
from typer.testing import CliRunner

from longqa.eval import perplexity as ppl
from longqa.eval.compare import compare_runs

TEXT = " ".join(f"The grass is green and the sky is blue number {i}." for i in range(120))


@pytest.mark.parametrize(
    "n,length,stride", [(100, 32, 16), (100, 32, 32), (33, 32, 8), (10, 32, 16)]
)
def test_windows_score_every_token_once(n, length, stride):
    wins = ppl.sliding_windows(n, length, stride)
    scored = []
    for begin, end, n_target in wins:
        assert end - begin <= length and n_target <= end - begin - 1
        scored.extend(range(end - n_target, end))
    if stride < length:
        assert scored == list(range(1, n))  # every token after the first, exactly once
    else:
        assert len(scored) == len(set(scored))


def test_window_nll_matches_hf_loss():
    import torch

    tok, model = tiny_tokenizer(), tiny_llama()
    ids = tok(TEXT[:300])["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = model(input_ids=x, labels=x).loss.item() * (len(ids) - 1)
        tail = x.clone()
        tail[:, : len(ids) - 10] = -100
        ref_tail = model(input_ids=x, labels=tail).loss.item() * 10
    assert ppl.window_nll(model, ids, len(ids) - 1) == pytest.approx(ref, rel=1e-4)
    assert ppl.window_nll(model, ids, 10) == pytest.approx(ref_tail, rel=1e-4)


def test_run_perplexity_files_and_full_window_value(tmp_path):
    import torch

    tok, model = tiny_tokenizer(), tiny_llama()
    (tmp_path / "doc.txt").write_text(TEXT)
    s = ppl.run_perplexity(
        model, tok, None, data=tmp_path / "doc.txt", lengths=[64, 128], out_dir=tmp_path / "run",
        max_tokens=128, show_progress=False,
    )  # fmt: skip
    assert set(s["by_length"]) == {"64", "128"} and s["metric"] == "perplexity"
    # one window covering the whole 128-token stream = exp(HF mean loss over it)
    ids = ppl.token_stream(tok, [TEXT], 128)
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = math.exp(model(input_ids=x, labels=x).loss.item())
    assert s["by_length"]["128"] == pytest.approx(ref, rel=1e-4)
    assert (tmp_path / "run/perplexity_by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "run/summary.json").read_text())["by_length"] == s["by_length"]


def test_perplexity_bad_data(tmp_path):
    from longqa.core.errors import LongqaError

    (tmp_path / "x.jsonl").write_text('{"txt": "no text field"}\n')
    with pytest.raises(LongqaError, match=r"x\.jsonl:1: field 'text' missing"):
        ppl.load_documents(tmp_path / "x.jsonl")


def _run(tmp_path, name, summary):
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_compare_two_runs(tmp_path):
    a = _run(tmp_path, "a", {"task": "passkey", "metric": "accuracy", "accuracy": 0.5, "rope": "none",
                              "by_length": {"4096": 1.0, "12288": 0.0}})  # fmt: skip
    b = _run(tmp_path, "b", {"task": "passkey", "metric": "accuracy", "accuracy": 0.9, "rope": "yarn",
                              "by_length": {"4096": 1.0, "12288": 0.8, "16384": 0.5}})  # fmt: skip
    info, rows = compare_runs(a, b)
    table = {name: (x, y, d) for name, x, y, d in rows}
    assert rows[0][0] == "accuracy" and table["accuracy"][2] == pytest.approx(0.4)
    assert table["length 12288"] == (0.0, 0.8, 0.8)
    assert table["length 16384"] == (None, 0.5, None)
    assert [r[0] for r in rows][-3:] == ["length 4096", "length 12288", "length 16384"]

    from longqa.cli.app import app

    res = CliRunner().invoke(app, ["eval", "compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "length 12288" in res.output and "+0.8" in res.output and "yarn" in res.output


def _cli(args):
    from longqa.cli.app import app

    return CliRunner().invoke(app, ["eval", *args])


def test_cli_bad_inputs_fail_before_loading_a_model(tmp_path):
    from longqa.core.errors import LongqaError

    (tmp_path / "bad.jsonl").write_text(
        '{"input": "a", "context": "b", "answers": ["Paragraph 1"]}\n'
    )
    res = _cli(["passage-retrieval", "--model", "nope", "--data", str(tmp_path / "bad.jsonl")])
    assert isinstance(res.exception, LongqaError)
    assert "bad.jsonl:1: field 'length' missing" in str(res.exception)

    empty = tmp_path / "hay"
    empty.mkdir()
    res = _cli(["needle", "--model", "nope", "--haystack", str(empty)])
    assert isinstance(res.exception, LongqaError) and "no text" in str(res.exception)

    res = _cli(["passkey", "--model", "nope", "--lengths", "4k"])
    assert isinstance(res.exception, LongqaError) and "--lengths" in str(res.exception)

    res = _cli(["compare", str(tmp_path), str(tmp_path)])
    assert isinstance(res.exception, LongqaError) and "summary.json: not found" in str(
        res.exception
    )


def test_cli_rope_flags_are_checked_before_loading_a_model(tmp_path):
    from longqa.core.errors import LongqaError

    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to score. " * 20)
    for task in ("passkey", "perplexity"):
        extra = ["--data", str(doc)] if task == "perplexity" else []
        res = _cli([task, "--model", "nope", "--rope-factor", "2", *extra])
        assert isinstance(res.exception, LongqaError), (task, res.output)
        assert "--rope-factor needs --rope METHOD" in str(res.exception)
    res = _cli(["passkey", "--model", "nope", "--rope", "bogus"])
    assert isinstance(res.exception, LongqaError) and "unknown rope method" in str(res.exception)
