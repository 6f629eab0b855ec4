"""FSDP2 on two CPU processes (gloo), launched through the shipped ``fsdp-qlora.yaml``, trains two
phases like one process with the same global batch: killed inside the second phase and resumed, it
ends with one process's curve and adapter. ``cpu_sharded_entry.py`` lets accelerate pick FSDP for
CPU ranks (it does so for GPU ranks only)."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from dist_fixtures import (
    ENTRY,
    assert_same_run,
    finish,
    kill_at_checkpoint,
    launch,
    write_recipe,
)
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

from longqa.config.recipe import load_recipe
from longqa.train.launch import launch_config_path
from longqa.train.trainer import run_training

CONFIG = launch_config_path("fsdp")  # used as shipped: FSDP2 needs no device-specific override

# Both runs see the same 4 samples per optimizer step; FSDP2 reduce-scatters (averages) the two
# ranks' fp32 gradients where one process sums two micro-batches, so only the order of fp32
# additions differs. Measured: losses equal to 4 decimals; adapter within 1.6e-7 after 4 steps
# of one phase and within 7.3e-6 after 2 + 2 steps over a phase hand-over (Adam's normalised
# steps magnify the rounding of near-zero gradients). The DDP test's 1e-4 / 1e-5 holds that with
# margin; a sliced or empty adapter tensor fails outright on its shape.
RTOL, ATOL = 1e-4, 1e-5


# two phases, the second from the first one's gathered adapter; the second checkpoints at its
# step 3 and 6, so a kill after its step 3 leaves three steps to resume
PHASES = (3, 6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    return tmp, tiny_model_dir(tmp), write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))


def _one_process(tmp, model, data):
    """The reference: one process, 2 x 2 accumulated micro-batches per step."""
    one = write_recipe(tmp, model, data, "one", micro=2, accum=2, steps=PHASES)
    run_training(load_recipe(str(one)))
    return tmp / "out-one"


def test_shipped_fsdp_config_is_fsdp2():
    cfg = load_config_from_file(str(CONFIG))
    assert str(cfg.distributed_type).endswith("FSDP")
    assert cfg.fsdp_config["fsdp_version"] == 2


def test_fsdp_two_processes_match_one_process_and_resume_after_a_kill(setup):
    tmp, model, data = setup
    two = write_recipe(tmp, model, data, "two", micro=2, accum=1, steps=PHASES)
    proc = launch(two, config=CONFIG, entry=ENTRY)
    # kill -9 the launcher and every rank, three steps before the end
    kill_at_checkpoint(proc, tmp / "out-two/sft2/checkpoint-3/trainer_state.json",
                       tmp / "out-two/sft2/adapter")  # fmt: skip
    # the Trainer checkpointed through FSDP: one model shard file per rank
    shards = list((tmp / "out-two/sft2/checkpoint-3/pytorch_model_fsdp_0").glob("*.distcp"))
    assert len(shards) == 2
    proc = launch(two, "--resume", config=CONFIG, entry=ENTRY)
    ref = _one_process(tmp, model, data)  # meanwhile, the single process in this one
    out = finish(proc)
    assert "phase sft1: already finished" in out and "phase sft2: resuming from" in out
    assert out.count("done: adapter in") == 1  # one console: rank 0 speaks
    # the whole curve, the steps before the kill and those after the resume: one process's curve
    assert_same_run(ref, tmp / "out-two", sum(PHASES), RTOL, ATOL)
