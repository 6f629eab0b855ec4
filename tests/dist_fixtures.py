"""Multi-process training runs for the tests: a tiny recipe, a launcher in its own session, kill -9.

``launch(recipe)`` starts ``longqa train`` on two CPU processes (gloo), either through
``torchrun`` (DDP) or through ``accelerate launch`` with a launch config (the sharded engines;
FSDP through ``cpu_sharded_entry.py``); ``finish(proc)`` waits and returns the console output.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).resolve().parent / "cpu_sharded_entry.py"


def write_recipe(
    tmp: Path,
    model: Path,
    data: Path,
    name: str,
    *,
    micro: int,
    accum: int,
    steps: int | tuple[int, ...],
) -> Path:
    """A float32 LoRA recipe for the tiny model; checkpoints every 3 steps, logs every step.
    ``steps`` as a tuple makes one sft phase per item (``sft1``, ``sft2``…, each going on from
    the previous one's adapter)."""
    counts = (steps,) if isinstance(steps, int) else steps
    names = ["sft"] if isinstance(steps, int) else [f"sft{i + 1}" for i in range(len(counts))]
    plan = [{"name": n, "kind": "sft", "datasets": [{"path": str(data)}], "steps": k}
            for n, k in zip(names, counts, strict=True)]  # fmt: skip
    tree = {
        "name": name,
        "model": {"name": str(model), "dtype": "float32", "quantization": "none"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {
            "lr": 5e-3, "schedule": "constant", "warmup_ratio": 0.0, "micro_batch_size": micro,
            "grad_accum": accum, "max_length": 64, "optim": "adamw_torch", "save_steps": 3,
            "logging_steps": 1, "phases": plan,
        },
        "output": {"dir": str(tmp / f"out-{name}")},
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    recipe: Path,
    *extra: str,
    config: Path | None = None,
    entry: Path | None = None,
    nproc: int = 2,
) -> subprocess.Popen:
    """``longqa train --recipe recipe *extra`` on ``nproc`` CPU processes: ``torchrun`` when
    ``config`` is None, else ``accelerate launch --config_file config``, running ``-m longqa``
    (as ``longqa train --launch`` does) or the script ``entry``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    port = str(free_port())
    if config is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(nproc), "--main_process_port", port]  # fmt: skip
    cmd += [str(entry)] if entry is not None else ["-m", "longqa"]
    cmd += ["train", "--recipe", str(recipe), *extra]
    log = open(recipe.with_suffix(f".{len(extra)}.log"), "w+", encoding="utf-8")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (they run in sessions of their own)."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def kill_at_checkpoint(
    proc: subprocess.Popen, ckpt: Path, unfinished: Path, wait: float = 240
) -> None:
    """Wait for ``ckpt`` to appear, then SIGKILL the launch; the checkpoint must exist and
    ``unfinished`` (the last phase's adapter) must not: the kill came before the end."""
    deadline = time.monotonic() + wait
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_all(proc)
    assert ckpt.exists(), "no checkpoint before the kill"
    assert not unfinished.exists(), "finished before the kill"


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for the launch; its console output (the test fails with its tail on a non-zero exit)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_all(proc)
        proc.log.seek(0)  # type: ignore[attr-defined]
        out = proc.log.read()  # type: ignore[attr-defined]
    assert proc.returncode == 0, out[-3000:]
    return out


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def assert_same_run(ref: Path, out: Path, steps: int, rtol: float, atol: float) -> None:
    """The multi-process run in ``out`` logged one process's curve (``ref``), every step of every
    phase, learned, and saved one process's adapter with every tensor whole."""
    import pytest

    from longqa.train.metrics import read_log

    want = {(r["phase"], r["step"]): r["loss"] for r in read_log(ref / "train_log.jsonl")}
    got = {(r["phase"], r["step"]): r["loss"] for r in read_log(out / "train_log.jsonl")}
    assert got.keys() == want.keys() and len(want) == steps, sorted(got)
    for key, loss in want.items():
        assert got[key] == pytest.approx(loss, rel=rtol, abs=atol), key
    assert want[("sft2", 6)] < want[("sft1", 1)] - 1.0  # it learns
    w1, w2 = adapter_tensors(ref), adapter_tensors(out)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert w2[k].shape == w1[k].shape, k
        torch.testing.assert_close(w2[k], w1[k], rtol=rtol, atol=atol)
