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


def yarn_reference(model, bos_id, docs_ids, max_length, sliding_window, truncate=False):
    """YaRN's compute_perplexity (eval/perplexity.py) re-written from its published loop: each
    document alone, BOS per window, HF loss of the window's targets, exp(mean of window losses)."""
    import torch

    max_tokenized_len = max_length - 1 if bos_id is not None else max_length
    if truncate:
        docs_ids = [d[:max_tokenized_len] for d in docs_ids]
        sliding_window = max_tokenized_len
    nlls = []
    for doc in docs_ids:
        labels = torch.tensor([doc])
        seq_len = labels.size(1)
        prev_end_loc = 0
        for begin_loc in range(0, seq_len, sliding_window):
            end_loc = min(begin_loc + max_tokenized_len, seq_len)
            trg_len = end_loc - prev_end_loc
            input_ids = labels[:, begin_loc:end_loc]
            if bos_id is not None:
                input_ids = torch.cat([torch.tensor([[bos_id]]), input_ids], dim=1)
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                nlls.append(model(input_ids, labels=target_ids).loss)
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
    return float(torch.exp(torch.stack(nlls).mean()))


@pytest.mark.parametrize("bos,truncate", [(True, False), (False, False), (True, True)])
def test_yarn_protocol_matches_reference(tmp_path, bos, truncate):
    from eval_fixtures import template_tokenizer

    tok = template_tokenizer("base") if bos else tiny_tokenizer()
    model = tiny_llama()
    model.resize_token_embeddings(len(tok))
    docs = [TEXT[:400], TEXT[:90], TEXT[1000:1500], TEXT[2000:2300]]  # one below min_tokens
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i}.txt").write_text(d)
    encoded = [tok(d.strip(), add_special_tokens=False)["input_ids"] for d in docs]
    min_tokens = 60
    assert sum(len(e) >= min_tokens for e in encoded) == 3
    s = ppl.run_perplexity(
        model, tok, None, data=folder, lengths=[48, 96], out_dir=tmp_path / "run",
        protocol="yarn", min_tokens=min_tokens, samples=2, stride=32, truncate=truncate,
        show_progress=False,
    )  # fmt: skip
    kept = [e for e in encoded if len(e) >= min_tokens][:2]
    for length in (48, 96):
        want = yarn_reference(model, tok.bos_token_id if bos else None, kept, length, 32, truncate)
        assert s["by_length"][str(length)] == pytest.approx(want, rel=1e-4)
    assert s["protocol"] == "yarn" and s["documents"] == 2 and s["bos"] is bos
    saved = json.loads((tmp_path / "run/summary.json").read_text())
    assert saved["protocol"] == "yarn" and saved["truncate"] is truncate
    if not bos or truncate:
        return
    # the stream protocol scores the same text differently (token-weighted, no BOS per window)
    stream = ppl.run_perplexity(
        model, tok, None, data=folder, lengths=[48], out_dir=tmp_path / "stream", stride=32,
        show_progress=False,
    )  # fmt: skip
    assert stream["protocol"] == "stream"
    assert stream["by_length"]["48"] != pytest.approx(s["by_length"]["48"], rel=1e-3)


@pytest.mark.parametrize("n,length,stride", [(100, 32, 16), (100, 32, 40), (20, 32, 8)])
def test_yarn_windows_follow_the_reference_loop(n, length, stride):
    wins = ppl.yarn_windows(n, length, stride, bos=True)
    begins = [b for b, _, _ in wins]
    assert begins == list(range(0, n, stride))[: len(wins)]
    assert all(e - b <= length - 1 for b, e, _ in wins) and wins[-1][1] == n
    assert ppl.yarn_windows(n, length, stride, bos=True, truncate=True) == [
        (0, min(n, length - 1), min(n, length - 1))
    ]


def test_cli_protocol_flags_are_checked_before_loading_a_model(tmp_path):
    from longqa.core.errors import LongqaError

    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to score. " * 20)
    res = _cli(["perplexity", "--model", "nope", "--data", str(doc), "--protocol", "pg19"])
    assert isinstance(res.exception, LongqaError) and "--protocol must be" in str(res.exception)
    res = _cli(["perplexity", "--model", "nope", "--data", str(doc), "--truncate"])
    assert isinstance(res.exception, LongqaError)
    assert "--truncate needs --protocol yarn" in str(res.exception)


def test_cli_logn_flag_becomes_part_of_the_spec(monkeypatch, tmp_path):
    from longqa.core.errors import LongqaError
    from longqa.models import load as load_module

    seen = {}

    def fake_load(model, adapter=None, rope=None, dtype="float32"):
        seen["rope"] = rope
        raise LongqaError("stop after parsing")

    monkeypatch.setattr(load_module, "load", fake_load)
    args = [
        "passkey",
        "--model",
        "m",
        "--rope",
        "dynamic-ntk",
        "--rope-ntk-variant",
        "qwen",
        "--rope-logn",
    ]
    res = _cli(args)
    assert "stop after parsing" in str(res.exception)
    assert seen["rope"].logn and seen["rope"].ntk_variant == "qwen"
    res = _cli(["passkey", "--model", "m", "--rope-logn"])
    assert "--rope-logn needs --rope METHOD" in str(res.exception)
