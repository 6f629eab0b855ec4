"""`longqa train` under Ctrl-C, a second writer, a full disk and a truncated checkpoint.

Each run is compared with an uninterrupted one of the same recipe: after the resume, the logged
steps and their losses and the final adapter are the same.
"""

from __future__ import annotations

import errno
import os
import signal

import pytest
import torch
from dist_fixtures import adapter_tensors, write_recipe
from interrupt_fixtures import interrupt, run, start, wait_for
from train_fixtures import tiny_model_dir, tiny_recipe, toy_sft_rows, write_jsonl
from transformers import TrainerCallback

from longqa.core.errors import LongqaError
from longqa.core.faults import WriteFailed
from longqa.core.interrupt import MESSAGE, Interrupted, clear_stop, request_stop
from longqa.train.metrics import read_log
from longqa.train.stopping import checkpoint_problem
from longqa.train.trainer import run_training

STEPS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stop")
    model, data = tiny_model_dir(tmp), write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))
    ref = write_recipe(tmp, model, data, "ref", micro=2, accum=1, steps=STEPS)
    run_training(_load(ref))
    return tmp, model, data, read_log(tmp / "out-ref/train_log.jsonl")


def _load(path):
    from longqa.config.recipe import load_recipe

    return load_recipe(str(path))


def _same_run(log, ref, out, ref_out):
    assert [r["step"] for r in log] == [r["step"] for r in ref]
    for a, b in zip(log, ref, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), a["step"]
    w, w_ref = adapter_tensors(out), adapter_tensors(ref_out)
    assert w.keys() == w_ref.keys()
    for k in w:
        torch.testing.assert_close(w[k], w_ref[k], rtol=1e-4, atol=1e-5)


def test_ctrl_c_stops_at_a_step_a_second_train_stops_and_resume_matches(setup):
    tmp, model, data, ref = setup
    recipe = write_recipe(tmp, model, data, "cli", micro=2, accum=1, steps=STEPS)
    out, log = tmp / "out-cli", tmp / "out-cli/train_log.jsonl"
    cmd = ["train", "--recipe", str(recipe)]
    first = start(cmd, tmp / "first.log")
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, first)
    os.kill(first.pid, signal.SIGSTOP)
    rc, seconds, lines = run(cmd, tmp / "second.log", timeout=120)
    assert rc == 2 and seconds <= 20, (rc, seconds, lines)
    busy = [line for line in lines if "in use" in line]
    assert busy == [lines[-1]] and f"pid {first.pid}" in busy[0], lines
    assert not any("Traceback" in line for line in lines)

    rc, seconds, lines = interrupt(first, signal.SIGINT)
    assert rc == 130 and seconds <= 10, (rc, seconds, lines[-5:])
    assert lines[-1] == MESSAGE and not any("Traceback" in line for line in lines)
    steps = [r["step"] for r in read_log(log)]
    assert 4 <= steps[-1] < STEPS and steps == list(range(1, steps[-1] + 1))
    assert (out / "sft" / f"checkpoint-{steps[-1]}").is_dir()  # the step it stopped at
    assert not (out / "adapter_config.json").exists()

    rc, _, lines = run([*cmd, "--resume"], tmp / "resume.log")
    assert rc == 0, lines[-10:]
    assert any(f"resuming from {out}/sft/checkpoint-{steps[-1]}" in line for line in lines)
    _same_run(read_log(log), ref, out, tmp / "out-ref")


class _StopAt(TrainerCallback):
    """Asks for a stop at one step end, as Ctrl-C does."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            request_stop()


def test_truncated_checkpoint_is_named_and_the_previous_one_resumes(setup, tmp_path):
    tmp, model, data, _ = setup
    common = dict(save_steps=2, micro_batch_size=2, phases=[_sft(data, 6)])
    ref_out, out = tmp_path / "ref", tmp_path / "cut"
    run_training(tiny_recipe(model, data, ref_out, **common))
    try:
        with pytest.raises(Interrupted):
            run_training(tiny_recipe(model, data, out, **common), callbacks=[_StopAt(3)])
    finally:
        clear_stop()
    last = out / "sft" / "checkpoint-3"
    assert checkpoint_problem(last) is None and (out / "sft" / "checkpoint-2").is_dir()
    optimizer = last / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    with pytest.raises(LongqaError) as err:
        run_training(tiny_recipe(model, data, out, **common), resume=True)
    assert str(err.value).startswith(f"{last} is incomplete (optimizer.pt truncated")
    assert "--resume-from-previous to continue from checkpoint-2" in str(err.value)
    run_training(tiny_recipe(model, data, out, **common), resume_from_previous=True)
    assert (out / "sft" / "incomplete-checkpoint-3").is_dir()
    ref = read_log(ref_out / "train_log.jsonl")
    _same_run(read_log(out / "train_log.jsonl"), ref, out, ref_out)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(setup, tmp_path, monkeypatch):
    tmp, model, data, _ = setup
    common = dict(save_steps=2, micro_batch_size=2, phases=[_sft(data, 6)])
    ref_out, out = tmp_path / "ref", tmp_path / "full"
    run_training(tiny_recipe(model, data, ref_out, **common))
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteFailed) as err:
        run_training(tiny_recipe(model, data, out, **common))
    assert str(err.value).startswith(f"cannot write {out}/sft/checkpoint-4: No space left")
    assert not (out / "sft" / "checkpoint-4").exists()
    assert checkpoint_problem(out / "sft" / "checkpoint-2") is None
    monkeypatch.setattr(torch, "save", real_save)
    run_training(tiny_recipe(model, data, out, **common), resume=True)
    ref = read_log(ref_out / "train_log.jsonl")
    _same_run(read_log(out / "train_log.jsonl"), ref, out, ref_out)


def _sft(data, steps):
    return {"name": "sft", "kind": "sft", "datasets": [{"path": str(data)}], "steps": steps}


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(setup):
    import psutil
    from dist_fixtures import finish, launch

    tmp, model, data, _ = setup
    recipe = write_recipe(tmp, model, data, "ranks", micro=2, accum=1, steps=12)
    out, log = tmp / "out-ranks", tmp / "out-ranks/train_log.jsonl"
    proc = launch(recipe)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, proc)
    ranks = {
        p.environ().get("RANK"): p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if p.environ().get("RANK") is not None
    }
    ranks["1"].send_signal(signal.SIGTERM)  # rank 1 alone
    proc.wait(timeout=120)
    proc.log.seek(0)
    text = proc.log.read()
    assert proc.returncode != 0 and text.count(MESSAGE) == 1, text[-3000:]
    steps = [r["step"] for r in read_log(log)]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 12
    assert (out / "sft" / f"checkpoint-{steps[-1]}" / "longqa_checkpoint.json").is_file()
    text = finish(launch(recipe, "--resume"))
    flat = "".join(text.split())  # the console wraps long lines
    assert f"resumingfrom{out}/sft/checkpoint-{steps[-1]}" in flat
    assert [r["step"] for r in read_log(log)] == list(range(1, 13))
