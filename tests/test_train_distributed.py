"""Two processes on gloo (CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

from longqa.config.recipe import load_recipe
from longqa.train.metrics import read_log
from longqa.train.trainer import run_training

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp: Path, model: Path, data: Path, name: str, *, micro: int, accum: int, steps: int):
    tree = {
        "name": name,
        "model": {"name": str(model), "dtype": "float32", "quantization": "none"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {
            "lr": 5e-3, "schedule": "constant", "warmup_ratio": 0.0, "micro_batch_size": micro,
            "grad_accum": accum, "max_length": 64, "optim": "adamw_torch", "save_steps": 3,
            "logging_steps": 1,
            "phases": [{"name": "sft", "kind": "sft", "datasets": [{"path": str(data)}],
                        "steps": steps}],
        },
        "output": {"dir": str(tmp / f"out-{name}")},
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(recipe: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "longqa", "train", "--recipe", str(recipe), *extra]  # fmt: skip
    log = open(recipe.with_suffix(f".{len(extra)}.log"), "w+", encoding="utf-8")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (they run in sessions of their own)."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            _kill_all(proc)
        proc.log.seek(0)  # type: ignore[attr-defined]
        out = proc.log.read()  # type: ignore[attr-defined]
    assert proc.returncode == 0, out[-3000:]
    return out


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, tiny_model_dir(tmp), write_jsonl(tmp / "toy.jsonl", toy_sft_rows(16))


def test_two_processes_match_one_process_with_the_same_global_batch(setup):
    tmp, model, data = setup
    one = _recipe(tmp, model, data, "one", micro=2, accum=2, steps=4)
    two = _recipe(tmp, model, data, "two", micro=2, accum=1, steps=4)
    proc = _torchrun(two)
    run_training(load_recipe(str(one)))  # meanwhile, the single process in this one
    out = _finish(proc)
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
    w1, w2 = _adapter(tmp / "out-one"), _adapter(tmp / "out-two")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert out.count("done: adapter in") == 1  # one console: rank 0 speaks


def test_two_processes_resume_after_a_kill(setup):
    tmp, model, data = setup
    ref = _recipe(tmp, model, data, "ref", micro=2, accum=2, steps=12)
    two = _recipe(tmp, model, data, "killed", micro=2, accum=1, steps=12)
    proc = _torchrun(two)
    ckpt = tmp / "out-killed/sft/checkpoint-3/trainer_state.json"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_all(proc)  # kill -9 the launcher and every rank
    assert ckpt.exists(), "no checkpoint before the kill"
    assert not (tmp / "out-killed/sft/adapter").exists(), "finished before the kill"
    out = _finish(_torchrun(two, "--resume"))
    assert "resuming from" in out
    run_training(load_recipe(str(ref)))
    last = {r["step"]: r["loss"] for r in read_log(tmp / "out-killed/train_log.jsonl")}
    want = {r["step"]: r["loss"] for r in read_log(tmp / "out-ref/train_log.jsonl")}
    assert last[12] == pytest.approx(want[12], rel=1e-4, abs=1e-5)
    w_ref, w_res = _adapter(tmp / "out-ref"), _adapter(tmp / "out-killed")
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=1e-4, atol=1e-5)
