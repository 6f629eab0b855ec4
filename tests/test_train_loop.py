"""Training end to end on a tiny random Llama: it learns, it resumes, the adapter reloads."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import tiny_model_dir, tiny_recipe, toy_sft_rows, write_jsonl
from transformers import TrainerCallback

from longqa.core.errors import LongqaError
from longqa.models.adapters import read_adapter_info
from longqa.models.load import load
from longqa.train.metrics import read_log
from longqa.train.phases import RunInputs, prepare_recipe
from longqa.train.trainer import run_training


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    model_dir = tiny_model_dir(tmp)
    data = write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))
    return tmp, model_dir, data


def _phase(data, steps, name="sft", kind="sft"):
    return {"name": name, "kind": kind, "datasets": [{"path": str(data)}], "steps": steps}


def test_tiny_model_learns_and_adapter_reloads(setup):
    tmp, model_dir, data = setup
    out = tmp / "learn"
    recipe = tiny_recipe(model_dir, data, out, lr=1e-2, phases=[_phase(data, 30)])
    final = run_training(recipe)
    assert final == out
    rows = read_log(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.35 * first, (first, last)
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_gb"] > 0 for r in rows)
    info = read_adapter_info(out)
    assert info["base_model"] == str(model_dir) and info["steps"] == 30
    # the reloaded adapter (norms included) reproduces the trained model's low loss
    model, tok, rope = load(adapter=out)
    assert rope is None
    from longqa.train.data import tokenize_conversation

    ex = tokenize_conversation(tok, toy_sft_rows(1)[0]["messages"])
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        tuned = model(input_ids=ids, labels=torch.tensor([ex.labels])).loss
        with model.disable_adapter():
            base = model(input_ids=ids, labels=torch.tensor([ex.labels])).loss
    assert tuned < 0.5 * base
    saved = {
        k
        for k in __import__("safetensors.torch").torch.load_file(out / "adapter_model.safetensors")
    }
    assert any("norm" in k for k in saved) and any("lora_A" in k for k in saved)


class _Crash(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_kill_continues_at_right_step_with_same_data(setup):
    tmp, model_dir, data = setup
    ref_out, out = tmp / "ref", tmp / "resumed"
    common = dict(lr=5e-3, save_steps=2, micro_batch_size=2, phases=[_phase(data, 6)])
    run_training(tiny_recipe(model_dir, data, ref_out, **common))
    ref = {r["step"]: r["loss"] for r in read_log(ref_out / "train_log.jsonl")}

    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_recipe(model_dir, data, out, **common), callbacks=[_Crash(3)])
    assert (out / "sft" / "checkpoint-2").is_dir() and not (out / "adapter_config.json").exists()
    run_training(tiny_recipe(model_dir, data, out, **common), resume=True)
    rows = read_log(out / "train_log.jsonl")
    steps = [r["step"] for r in rows]
    # killed inside step 3 (before it was logged); the resumed run starts at step 3
    assert steps == [1, 2, 3, 4, 5, 6]
    resumed = {r["step"]: r["loss"] for r in rows[2:]}
    for step in (3, 4, 5, 6):  # same batches in the same order → same losses
        assert resumed[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5)
    assert read_adapter_info(out)["steps"] == 6


def test_two_phases_chain_and_finished_phases_are_skipped_on_resume(setup, tmp_path):
    _, model_dir, data = setup
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "the cat sat on the mat " * 6}] * 4)
    phases = [_phase(text, 2, "pretrain", "pretrain"), _phase(data, 2)]
    out = tmp_path / "two"
    run_training(tiny_recipe(model_dir, data, out, phases=phases))
    assert read_adapter_info(out / "pretrain" / "adapter")["phase"] == "pretrain"
    assert read_adapter_info(out)["phase"] == "sft"
    before = (out / "adapter_model.safetensors").read_bytes()
    run_training(tiny_recipe(model_dir, data, out, phases=phases), resume=True)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    assert [r["phase"] for r in read_log(out / "train_log.jsonl")] == ["pretrain"] * 2 + ["sft"] * 2


class _PackedInputs(TrainerCallback):
    """Records the training rows and what each call of the decoder trunk receives."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.calls: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        self.rows = [train_dataloader.dataset[i] for i in range(len(train_dataloader.dataset))]
        (trunk,) = [
            m for m in model.modules() if hasattr(m, "embed_tokens") and hasattr(m, "layers")
        ]
        trunk.register_forward_pre_hook(
            lambda module, a, kwargs: self.calls.append(dict(kwargs)), with_kwargs=True
        )


def _segments(position_ids: list[int]) -> list[list[int]]:
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return [position_ids[a:b] for a, b in zip(starts, starts[1:], strict=False)]


def test_packed_training_runs_and_counts_rows(setup, tmp_path):
    _, model_dir, data = setup
    recipe = tiny_recipe(model_dir, data, tmp_path / "p", phases=[_phase(data, 2)])
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": True})})
    seen = _PackedInputs()
    run_training(recipe, callbacks=[seen])
    assert len(read_log(tmp_path / "p" / "train_log.jsonl")) == 2
    # 16 conversations packed into fewer rows of at most max_length tokens
    segments = [seg for row in seen.rows for seg in _segments(row["position_ids"])]
    assert len(segments) == 16 and len(seen.rows) < 16
    assert any(len(_segments(row["position_ids"])) > 1 for row in seen.rows)
    for row in seen.rows:
        assert len(row["input_ids"]) == len(row["position_ids"]) <= 64
    for seg in segments:  # positions restart at 0 for every packed example and count up
        assert seg == list(range(len(seg)))
    # the model gets the restarting position ids (per-sample attention) and no attention mask
    assert len(seen.calls) >= 2
    for call in seen.calls:
        pos = call["position_ids"]
        assert call.get("attention_mask") is None
        assert pos.shape == call["input_ids"].shape
        assert int((pos == 0).sum()) > pos.shape[0]  # more segments than rows in the batch


def test_prepare_recipe_data_out_and_max_steps(setup, tmp_path):
    _, model_dir, data = setup
    phases = [_phase(tmp_path / "missing-text", 100, "pre", "pretrain"), _phase("x.jsonl", 50)]
    recipe = tiny_recipe(model_dir, data, tmp_path / "o", phases=phases)
    new, notes = prepare_recipe(
        recipe,
        RunInputs(
            data=[str(data)], out=str(tmp_path / "z"), max_steps=3, pretrain_on_sft_text=True
        ),
    )
    assert [p.steps for p in new.train.phases] == [3, 3]
    assert all(p.datasets[0].path == str(data) for p in new.train.phases)
    assert str(new.output_dir) == str(tmp_path / "z") and len(notes) == 2
    with pytest.raises(LongqaError, match="dataset not found: .*missing-text"):
        run_training(tiny_recipe(model_dir, data, tmp_path / "o", phases=phases[:1]))


def test_model_not_on_disk_is_one_line_error(setup, tmp_path, monkeypatch):
    _, _, data = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in (str(tmp_path / "no-model"), "nobody/no-such-model"):
        recipe = tiny_recipe(name, data, tmp_path / "o")
        with pytest.raises(LongqaError) as err:
            run_training(recipe)
        assert "\n" not in str(err.value) and "no-" in str(err.value)


def test_skipped_bad_rows_and_skipped_pretraining_are_in_the_run_summary(setup, tmp_path):
    from rich.console import Console

    _, model_dir, data = setup
    bad = tmp_path / "with-bad.jsonl"
    bad.write_text(data.read_text() + '{"messages": [{"role": "robot", "content": "beep"}]}\n')
    phases = [_phase(tmp_path / "no-text", 1, "pre", "pretrain"), _phase("gone.jsonl", 1)]
    recipe = tiny_recipe(model_dir, data, tmp_path / "s", phases=phases)
    with pytest.raises(LongqaError, match=r"with-bad\.jsonl:17: field 'messages\.0\.role'"):
        run_training(recipe, RunInputs(data=[str(bad)]))
    console = Console(record=True, width=200)
    run_training(recipe, RunInputs(data=[str(bad)]), skip_bad_rows=True, console=console)
    text = console.export_text()
    assert "phase 'pre' (pretrain) skipped: dataset not found" in text
    assert "data: with-bad.jsonl → messages, 16 rows" in text
    assert "1 bad rows skipped (unknown_role 1)" in text
    assert "bad rows skipped: 1 (unknown_role 1)" in text
    assert [r["phase"] for r in read_log(tmp_path / "s" / "train_log.jsonl")] == ["sft"]
