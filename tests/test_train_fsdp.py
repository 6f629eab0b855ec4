"""FSDP2 on two CPU processes (gloo), launched through the shipped ``fsdp-qlora.yaml``, trains two
phases like one process with the same global batch, writes the same adapter, and resumes after a
kill. ``cpu_sharded_entry.py`` lets accelerate pick FSDP for CPU ranks (it does so only for GPUs)."""

from __future__ import annotations

import time

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from dist_fixtures import ENTRY, adapter_tensors, finish, kill_all, launch, write_recipe
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

from longqa.config.recipe import load_recipe
from longqa.train.launch import launch_config_path
from longqa.train.metrics import read_log
from longqa.train.trainer import run_training

CONFIG = launch_config_path("fsdp")  # used as shipped: FSDP2 needs no device-specific override

# Both runs see the same 4 samples per optimizer step; FSDP2 reduce-scatters (averages) the two
# ranks' fp32 gradients where one process sums two micro-batches, so the only difference is the
# order of fp32 additions (~1e-7 relative per step; measured: losses equal to 4 decimals, adapter
# within 1.6e-7 after 4 steps). Adam keeps such differences relative, so 1e-4 / 1e-5 — the DDP
# test's tolerance — leaves two orders of margin and still catches a lost all-reduce, a missing
# rank scaling or a rank-0-only adapter (those move the loss in the second decimal).
RTOL, ATOL = 1e-4, 1e-5


# two phases, the second from the first one's gathered adapter; the second checkpoints at its
# step 3 and 6, so a kill after its step 3 leaves three steps to resume
PHASES = (3, 6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    return tmp, tiny_model_dir(tmp), write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))


def _one_process(tmp, model, data):
    """The reference: one process, 2 x 2 accumulated micro-batches per step (trained once)."""
    out = tmp / "out-one"
    if not (out / "adapter_model.safetensors").exists():
        one = write_recipe(tmp, model, data, "one", micro=2, accum=2, steps=PHASES)
        run_training(load_recipe(str(one)))
    return out


def test_shipped_fsdp_config_is_fsdp2():
    cfg = load_config_from_file(str(CONFIG))
    assert str(cfg.distributed_type).endswith("FSDP")
    assert cfg.fsdp_config["fsdp_version"] == 2


def test_fsdp_two_processes_match_one_process_with_the_same_global_batch(setup):
    tmp, model, data = setup
    two = write_recipe(tmp, model, data, "two", micro=2, accum=1, steps=PHASES)
    proc = launch(two, config=CONFIG, entry=ENTRY)
    ref = _one_process(tmp, model, data)  # meanwhile, the single process in this one
    out = finish(proc)
    # the Trainer checkpointed through FSDP: one model shard file per rank
    shards = list((tmp / "out-two/sft1/checkpoint-3/pytorch_model_fsdp_0").glob("*.distcp"))
    assert len(shards) == 2, out[-2000:]
    log1 = read_log(ref / "train_log.jsonl")
    log2 = read_log(tmp / "out-two/train_log.jsonl")
    assert [(r["phase"], r["step"]) for r in log2] == [(r["phase"], r["step"]) for r in log1]
    assert len(log2) == sum(PHASES), out[-2000:]
    for a, b in zip(log1, log2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=RTOL, abs=ATOL)
    assert log2[-1]["loss"] < log2[0]["loss"] - 1.0
    # the adapter was gathered from both ranks' shards: every tensor whole, equal to one process's
    w1, w2 = adapter_tensors(ref), adapter_tensors(tmp / "out-two")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert w2[k].shape == w1[k].shape, k
        torch.testing.assert_close(w2[k], w1[k], rtol=RTOL, atol=ATOL)
    assert out.count("done: adapter in") == 1


def test_fsdp_two_processes_resume_after_a_kill(setup):
    tmp, model, data = setup
    two = write_recipe(tmp, model, data, "killed", micro=2, accum=1, steps=PHASES)
    proc = launch(two, config=CONFIG, entry=ENTRY)
    ckpt = tmp / "out-killed/sft2/checkpoint-3/trainer_state.json"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_all(proc)  # kill -9 the launcher and every rank
    assert ckpt.exists(), "no checkpoint before the kill"
    assert not (tmp / "out-killed/sft2/adapter").exists(), "finished before the kill"
    out = finish(launch(two, "--resume", config=CONFIG, entry=ENTRY))
    assert "phase sft1: already finished" in out and "phase sft2: resuming from" in out
    ref = _one_process(tmp, model, data)
    last = {
        (r["phase"], r["step"]): r["loss"] for r in read_log(tmp / "out-killed/train_log.jsonl")
    }
    want = {(r["phase"], r["step"]): r["loss"] for r in read_log(ref / "train_log.jsonl")}
    assert last[("sft2", 6)] == pytest.approx(want[("sft2", 6)], rel=RTOL, abs=ATOL)
    w_ref, w_res = adapter_tensors(ref), adapter_tensors(tmp / "out-killed")
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=RTOL, atol=ATOL)
