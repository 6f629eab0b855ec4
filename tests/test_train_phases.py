"""`--data PATH[:WEIGHT]` on a recipe: sft phases replaced, pretraining never silently substituted;
`longqa data inspect` on a hand-written file."""

from __future__ import annotations

import pytest
from train_fixtures import tiny_model_dir, tiny_recipe, tiny_tokenizer, toy_sft_rows, write_jsonl

from longqa.config.recipe import DatasetSpec
from longqa.core.errors import LongqaError
from longqa.data.conversation import IGNORE_INDEX
from longqa.train.data import tokenize_conversation
from longqa.train.phases import RunInputs, parse_data_arg, prepare_recipe


def _phase(path, name, kind, steps=5):
    return {"name": name, "kind": kind, "datasets": [{"path": str(path)}], "steps": steps}


def test_parse_data_arg_weights_and_paths_with_colons(tmp_path):
    assert parse_data_arg("a.jsonl:2") == DatasetSpec(path="a.jsonl", weight=2.0)
    assert parse_data_arg("a.jsonl", "alpaca") == DatasetSpec(path="a.jsonl", format="alpaca")
    assert parse_data_arg("host:dir/a.jsonl").path == "host:dir/a.jsonl"
    with pytest.raises(LongqaError, match="must be > 0"):
        parse_data_arg("a.jsonl:0")
    with pytest.raises(LongqaError, match="--data-format chatml"):
        parse_data_arg("a.jsonl", "chatml")


def test_pretraining_without_data_is_skipped_never_silently_replaced(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", toy_sft_rows(2))
    other = write_jsonl(tmp_path / "other.jsonl", toy_sft_rows(2))
    phases = [_phase(tmp_path / "no-text", "pre", "pretrain"), _phase("gone.jsonl", "sft", "sft")]
    recipe = tiny_recipe(tmp_path, chat, tmp_path / "o", phases=phases)
    data = [str(chat), f"{other}:0.5"]

    new, notes = prepare_recipe(recipe, RunInputs(data=data, data_format="messages"))
    assert [p.name for p in new.train.phases] == ["sft"]
    assert new.train.phases[0].datasets == [
        DatasetSpec(path=str(chat), format="messages"),
        DatasetSpec(path=str(other), weight=0.5, format="messages"),
    ]
    skipped = [n for n in notes if "skipped" in n]
    assert len(skipped) == 1 and "phase 'pre' (pretrain) skipped: dataset not found" in skipped[0]
    assert "--pretrain-on-sft-text" in skipped[0]

    with pytest.raises(LongqaError, match="pretraining phase 'pre' has no data: .*no-text"):
        prepare_recipe(recipe, RunInputs(data=data, strict=True))

    new, notes = prepare_recipe(recipe, RunInputs(data=data, pretrain_on_sft_text=True))
    assert [p.name for p in new.train.phases] == ["pre", "sft"]
    assert new.train.phases[0].datasets == new.train.phases[1].datasets
    assert any("--pretrain-on-sft-text" in n and "instead" in n for n in notes)

    # a pretraining phase whose text exists keeps it: --data replaces the sft phases only
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "the cat sat"}])
    phases[0] = _phase(text, "pre", "pretrain")
    new, _ = prepare_recipe(
        tiny_recipe(tmp_path, chat, tmp_path / "o", phases=phases), RunInputs(data=data)
    )
    assert new.train.phases[0].datasets == [DatasetSpec(path=str(text))]


def test_data_inspect_prints_format_rows_histogram_and_trained_share(tmp_path):
    model_dir = tiny_model_dir(tmp_path)
    rows = toy_sft_rows(3)
    alpaca = [
        {"instruction": m[0]["content"], "output": m[1]["content"]}
        for m in (r["messages"] for r in rows)
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(__import__("json").dumps(alpaca))
    from typer.testing import CliRunner

    from longqa.cli.app import app

    args = ["data", "inspect", str(path), "--tokenizer", str(model_dir), "--max-length", "16"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-2000:]
    out = res.stdout.splitlines()
    assert out[0] == "data: alpaca.json → alpaca, 3 rows"
    tok = tiny_tokenizer()
    examples = [tokenize_conversation(tok, r["messages"]) for r in rows]
    lengths = [len(e) for e in examples]
    trained = sum(sum(t != IGNORE_INDEX for t in e.labels) for e in examples)
    assert f"total {sum(lengths):,}" in res.stdout and f"max {max(lengths)}" in res.stdout
    over = sum(n > 16 for n in lengths)
    assert f"max_length 16: {over} rows over" in res.stdout
    bins = {
        ln.split("tokens")[0].strip(): int(ln.split("|")[1].split()[0]) for ln in out if "|" in ln
    }
    assert sum(bins.values()) == 3 and bins["13-16"] == sum(12 < n <= 16 for n in lengths)
    assert f"trained tokens: {trained / sum(lengths):.1%}" in res.stdout


def test_pretrain_data_replaces_or_adds_the_pretraining_phase(tmp_path):
    from longqa.config.recipe import load_recipe
    from longqa.train.phases import build_phase_dataset

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("the cat sat on the mat")
    (texts / "b.md").write_text("the dog sat")
    chat = write_jsonl(tmp_path / "chat.jsonl", toy_sft_rows(2))
    shipped = load_recipe("smollm2-135m-yarn16k")
    new, notes = prepare_recipe(shipped, RunInputs(pretrain_data=[f"{texts}:2"], data=[str(chat)]))
    pre = [p for p in new.train.phases if p.kind == "pretrain"]
    assert pre and all(p.datasets == [DatasetSpec(path=str(texts), weight=2.0)] for p in pre)
    assert any("--pretrain-data: " in n and str(texts) in n for n in notes)
    assert not any("skipped" in n for n in notes)
    # a recipe with only an sft phase gets a pretraining phase before it
    sft_only = tiny_recipe(tmp_path, chat, tmp_path / "o", phases=[_phase(chat, "sft", "sft")])
    new, notes = prepare_recipe(sft_only, RunInputs(pretrain_data=[str(texts)]))
    assert [(p.name, p.kind) for p in new.train.phases] == [
        ("pretrain", "pretrain"),
        ("sft", "sft"),
    ]
    tok = tiny_tokenizer()
    _ds, _c, stats = build_phase_dataset(new, new.train.phases[0], tok)
    assert stats.examples == 2
    assert stats.detected == ["data: a.txt → text, 1 row", "data: b.md → text, 1 row"]
    with pytest.raises(LongqaError, match=r"--pretrain-data .*texts:x: the weight 'x'"):
        prepare_recipe(sft_only, RunInputs(pretrain_data=[f"{texts}:x"]))
    # plain text given to --data trains in sft, with a notice pointing at --pretrain-data
    new, _ = prepare_recipe(sft_only, RunInputs(data=[str(texts)]))
    _ds, _c, stats = build_phase_dataset(new, new.train.phases[0], tok)
    assert any("pass it as --pretrain-data" in n for n in stats.notes)


def test_train_help_shows_the_data_flags():
    from typer.testing import CliRunner

    from longqa.cli.app import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for flag in ("--pretrain-data", "--data-columns", "--skip-bad-rows", "skipped_rows.txt"):
        assert flag in res.output
