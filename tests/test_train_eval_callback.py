"""Long-context probes during training: the callback on tiny models, its log rows, collapse
warnings, the restored train mode, and the effective context in the adapter bundle."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import tiny_llama, tiny_tokenizer
from train_fixtures import tiny_model_dir, tiny_recipe, toy_sft_rows, write_jsonl

from longqa.config.recipe import EvalConfig, recipe_from_dict
from longqa.core.errors import LongqaError
from longqa.train.eval_callback import LongContextEvalCallback


def _rows(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


def test_evaluate_logs_by_length_and_restores_train_mode(tmp_path):
    model, tok = tiny_llama(max_position_embeddings=1024), tiny_tokenizer()
    (tmp_path / "hay").mkdir()
    (tmp_path / "hay" / "a.txt").write_text("The sky is blue. The sea is green. " * 200)
    cfg = EvalConfig(
        enabled=True, lengths=[768, 512], samples=1, ruler=["niah_single_1"], max_new_tokens=8,
        needle=True, haystack=str(tmp_path / "hay"),
    )  # fmt: skip
    printed = []

    class Console:
        def print(self, msg, **kw):
            printed.append(msg)

    cb = LongContextEvalCallback(cfg, tok, None, tmp_path, phase="sft", console=Console())
    model.train()
    row = cb.evaluate(model, step=3)
    assert model.training  # back in training mode
    assert all(p.grad is None for p in model.parameters())  # no gradients from the probe
    assert set(row["passkey"]) == set(row["needle"]) == set(row["ruler"]) == {"512", "768"}
    assert row["ruler_table"]["niah_single_1"].keys() == {"512", "768"}
    logged = _rows(tmp_path / "train_log.jsonl")
    assert logged == [row] and row["event"] == "eval" and row["step"] == 3
    # the effective context follows RULER's definition on the logged scores
    want = max([int(k) for k, v in row["ruler"].items() if v >= 85.6], default=0)
    assert row["effective_context"] == want
    for probe in ("passkey", "needle", "ruler"):
        assert (tmp_path / "eval" / "sft-step3" / probe / "results.jsonl").is_file()
    assert any("sft" in m and "step 3 eval" in m for m in printed)
    info = cb.bundle_info()
    assert info["effective_context"] == want and info["eval"]["step"] == 3


def test_collapse_warning(tmp_path):
    cfg = EvalConfig(enabled=True, lengths=[100, 200], ruler=[], collapse_ratio=0.5)
    cb = LongContextEvalCallback(cfg, tiny_tokenizer(), None, tmp_path)
    assert cb._collapse({"passkey": {"100": 1.0, "200": 0.8}}) == []
    assert cb._collapse({"passkey": {"100": 1.0, "200": 0.5}}) == []  # 0.5 ≥ 0.5 × 0.8
    msgs = cb._collapse({"passkey": {"100": 1.0, "200": 0.3}})
    assert len(msgs) == 1 and "passkey at 200 tokens collapsed" in msgs[0]
    assert cb._collapse({"ruler": {"200": 0.0}}) == []  # no earlier best: nothing to collapse from


def test_eval_section_validation():
    with pytest.raises(LongqaError, match="eval.lengths"):
        recipe_from_dict({"name": "x", "model": {"name": "m"}, "eval": {"lengths": []}})
    with pytest.raises(LongqaError, match="unknown key"):
        recipe_from_dict({"name": "x", "model": {"name": "m"}, "eval": {"every": 3}})
    with pytest.raises(LongqaError, match="unknown RULER task"):
        LongContextEvalCallback(EvalConfig(ruler=["nope"]), tiny_tokenizer(), None, ".")


def test_training_runs_probes_and_bundle_records_effective_context(tmp_path):
    from longqa.models.adapters import read_adapter_info
    from longqa.train.trainer import run_training

    model_dir = tiny_model_dir(tmp_path)
    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(8))
    recipe = tiny_recipe(model_dir, data, tmp_path / "out")
    tree = recipe.model_dump(mode="json")
    tree["train"]["phases"][0]["steps"] = 4
    tree["eval"] = {
        "enabled": True, "every_steps": 2, "lengths": [256], "samples": 1,
        "passkey": True, "ruler": ["niah_single_1"], "threshold": 0.0, "max_new_tokens": 4,
    }  # fmt: skip
    run_training(recipe_from_dict(tree))
    rows = _rows(tmp_path / "out" / "train_log.jsonl")
    evals = [r for r in rows if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4]  # every 2 steps; the end of the phase is step 4
    assert all(set(r["passkey"]) == {"256"} and set(r["ruler"]) == {"256"} for r in evals)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    info = read_adapter_info(tmp_path / "out")
    assert info["effective_context"] == 256  # threshold 0: every tested length passes
    assert info["eval"]["step"] == 4 and info["eval"]["threshold"] == 0.0


def test_shipped_recipes_eval_sections():
    from longqa.config.recipe import list_recipes, load_recipe
    from longqa.eval.ruler import resolve_tasks

    for name in list_recipes():
        r = load_recipe(name)
        assert resolve_tasks(r.eval.ruler) == r.eval.ruler  # valid names, table order
        assert r.eval.enabled == (name != "smollm2-135m-yarn16k"), name  # off only on the CPU demo
        if r.eval.enabled:
            assert max(r.eval.lengths) == r.rope.max_position_embeddings  # probes the target window
