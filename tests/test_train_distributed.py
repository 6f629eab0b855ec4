"""Two processes on gloo (CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import time

import pytest
import torch
from dist_fixtures import adapter_tensors, finish, kill_all, launch, write_recipe
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

from longqa.config.recipe import load_recipe
from longqa.train.metrics import read_log
from longqa.train.trainer import run_training


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, tiny_model_dir(tmp), write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))


def test_two_processes_match_one_process_with_the_same_global_batch(setup):
    tmp, model, data = setup
    one = write_recipe(tmp, model, data, "one", micro=2, accum=2, steps=4)
    two = write_recipe(tmp, model, data, "two", micro=2, accum=1, steps=4)
    proc = launch(two)
    run_training(load_recipe(str(one)))  # meanwhile, the single process in this one
    out = finish(proc)
    log1, log2 = (
        read_log(tmp / "out-one/train_log.jsonl"),
        read_log(tmp / "out-two/train_log.jsonl"),
    )
    # rank 0 alone writes the log: one row per step, not one per rank
    assert [r["step"] for r in log2] == [1, 2, 3, 4], out[-2000:]
    # same samples per step, token-weighted over both ranks, gradients all-reduced: same curve
    for a, b in zip(log1, log2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
    assert log2[-1]["loss"] < log2[0]["loss"]
    w1, w2 = adapter_tensors(tmp / "out-one"), adapter_tensors(tmp / "out-two")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert out.count("done: adapter in") == 1  # one console: rank 0 speaks


def test_two_processes_resume_after_a_kill(setup):
    tmp, model, data = setup
    ref = write_recipe(tmp, model, data, "ref", micro=2, accum=2, steps=12)
    two = write_recipe(tmp, model, data, "killed", micro=2, accum=1, steps=12)
    proc = launch(two)
    ckpt = tmp / "out-killed/sft/checkpoint-3/trainer_state.json"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_all(proc)  # kill -9 the launcher and every rank
    assert ckpt.exists(), "no checkpoint before the kill"
    assert not (tmp / "out-killed/sft/adapter").exists(), "finished before the kill"
    out = finish(launch(two, "--resume"))
    assert "resuming from" in out
    run_training(load_recipe(str(ref)))
    last = {r["step"]: r["loss"] for r in read_log(tmp / "out-killed/train_log.jsonl")}
    want = {r["step"]: r["loss"] for r in read_log(tmp / "out-ref/train_log.jsonl")}
    assert last[12] == pytest.approx(want[12], rel=1e-4, abs=1e-5)
    w_ref, w_res = adapter_tensors(tmp / "out-ref"), adapter_tensors(tmp / "out-killed")
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=1e-4, atol=1e-5)
