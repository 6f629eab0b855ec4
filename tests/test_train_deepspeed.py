"""DeepSpeed ZeRO-3 on two CPU processes (gloo, DeepSpeed's CPU accelerator), launched through the
shipped ``deepspeed-zero3.yaml`` keys, trains two phases like one process with the same global
batch: killed inside the second phase and resumed, it ends with one process's curve and adapter.
Needs ``pip install deepspeed``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from dist_fixtures import assert_same_run, finish, kill_at_checkpoint, launch, write_recipe
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

from longqa.config.recipe import load_recipe
from longqa.train.launch import launch_config_path
from longqa.train.trainer import run_training

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
    ),
]

# two phases, the second from the first one's gathered adapter; the second checkpoints at its
# step 3 and 6, so a kill after its step 3 leaves three steps to resume
PHASES = (3, 6)
# Same argument as the FSDP test: only the order of fp32 additions differs (ZeRO-3 averages the
# ranks' gradients by reduce-scatter; one process sums two micro-batches). Measured: losses equal
# to 4 decimals, adapter within 3.6e-7 after 4 steps (4.9e-6 with LoRA r=16).
RTOL, ATOL = 1e-4, 1e-5

# shipped accelerate key -> its place in a DeepSpeed config (accelerate's own translation)
DS_KEYS = {
    "zero_stage": ("zero_optimization", "stage"),
    "zero3_save_16bit_model": ("zero_optimization", "stage3_gather_16bit_weights_on_model_save"),
    "offload_optimizer_device": ("zero_optimization", "offload_optimizer", "device"),
    "offload_param_device": ("zero_optimization", "offload_param", "device"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "gradient_clipping": ("gradient_clipping",),
}


def cpu_variant(tmp: Path) -> Path:
    """The shipped ZeRO-3 config with one size key added. Every tensor of the tiny model is below
    DeepSpeed's persistence threshold (1e5 elements; smaller tensors stay whole on every rank after
    their first use), so nothing would stay partitioned; at 0, every tensor is partitioned, as an
    8B model's are. Adding a key needs the DeepSpeed keys in a JSON file: the shipped ones are
    translated there (a key this test does not know fails it rather than being dropped)."""
    cfg = yaml.safe_load(launch_config_path("deepspeed").read_text(encoding="utf-8"))
    shipped = cfg.pop("deepspeed_config")
    assert set(shipped) == {*DS_KEYS, "zero3_init_flag"}, sorted(shipped)
    ds: dict = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}
    for key, where in DS_KEYS.items():
        node = ds
        for part in where[:-1]:
            node = node.setdefault(part, {})
        node[where[-1]] = shipped[key]
    assert ds["zero_optimization"]["stage"] == 3
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp / "ds.json").write_text(json.dumps(ds), encoding="utf-8")
    # with a DeepSpeed file accelerate refuses its own precision key: fp32 is the file's default
    assert cfg.pop("mixed_precision") == "no"
    cfg["deepspeed_config"] = {
        "deepspeed_config_file": str(tmp / "ds.json"),
        "zero3_init_flag": shipped["zero3_init_flag"],
    }
    out = tmp / "deepspeed-zero3-cpu.yaml"
    out.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3")
    data = write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))
    return tmp, tiny_model_dir(tmp), data, cpu_variant(tmp)


def _one_process(tmp, model, data):
    """The reference: one process, 2 x 2 accumulated micro-batches per step."""
    one = write_recipe(tmp, model, data, "one", micro=2, accum=2, steps=PHASES)
    run_training(load_recipe(str(one)))
    return tmp / "out-one"


def test_zero3_two_processes_match_one_process_and_resume_after_a_kill(setup):
    tmp, model, data, config = setup
    two = write_recipe(tmp, model, data, "two", micro=2, accum=1, steps=PHASES)
    proc = launch(two, config=config)
    # kill -9 the launcher and every rank, three steps before the end
    kill_at_checkpoint(proc, tmp / "out-two/sft2/checkpoint-3/trainer_state.json",
                       tmp / "out-two/sft2/adapter")  # fmt: skip
    # the Trainer checkpointed through DeepSpeed: each rank wrote its partition
    step3 = tmp / "out-two/sft1/checkpoint-3/global_step3"
    assert len(list(step3.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    proc = launch(two, "--resume", config=config)
    ref = _one_process(tmp, model, data)  # meanwhile, the single process in this one
    out = finish(proc)
    assert "phase sft1: already finished" in out and "phase sft2: resuming from" in out
    assert out.count("done: adapter in") == 1
    assert_same_run(ref, tmp / "out-two", sum(PHASES), RTOL, ATOL)
