"""DeepSpeed Ulysses (ALST) sequence parallelism on two CPU ranks (gloo all-to-all): the split
sequence gives the unsplit loss and gradients. Needs ``pip install deepspeed``; the ranks run
``ulysses_worker.py``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_fixtures import ENTRY, REPO, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
    ),
]

WORKER = Path(__file__).resolve().parent / "ulysses_worker.py"


def _run(tmp: Path, mode: str) -> dict:
    out = tmp / f"{mode}.json"
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(WORKER), str(out), mode]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_ulysses_two_ranks_give_the_unsplit_loss_and_gradients(tmp_path):
    r = _run(tmp_path, "unpacked")
    assert r["shard_tokens"] == 16  # each rank held half of the 32-token row
    # same sums in another order (the all-to-alls move exact values; the loss is summed from two
    # halves): measured 0 on the loss and 4.5e-8 on gradients up to 0.46
    assert r["sp_loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["ref_loss"] > 4.0  # a random model's loss (ln 128 = 4.85), not a degenerate zero
    assert r["max_grad_diff"] < 1e-6 * max(1.0, r["max_grad"])


@pytest.mark.xfail(
    strict=True,
    reason="DeepSpeed's Ulysses wrapper drops the attention mask; under SDPA a packed row is then "
    "one causal sequence (samples attend to each other); flash-attn's varlen path keeps them apart",
)
def test_ulysses_packed_row_keeps_samples_apart_under_sdpa(tmp_path):
    r = _run(tmp_path, "packed")
    assert r["sp_loss"] == pytest.approx(r["ref_loss"], rel=1e-5)


def test_longqa_train_under_ulysses_matches_one_process_unpacked(tmp_path):
    """``longqa train`` under the shipped ``deepspeed-ulysses.yaml`` (2 ranks, one split row per
    step, SDPA, unpacked rows) gives one process's curve and adapter. Measured: losses equal to 6
    decimals, adapter within 3.2e-7. Before the Trainer counted the pieces' ``shift_labels``,
    each rank's loss was its own piece's mean: the logged loss was half (the piece holding the
    prompt scores nothing), and so was the gradient."""
    import yaml
    from dist_fixtures import adapter_tensors, finish, launch, write_recipe
    from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

    from longqa.config.recipe import load_recipe
    from longqa.train.launch import launch_config_path
    from longqa.train.metrics import read_log
    from longqa.train.trainer import run_training

    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(16))
    model = tiny_model_dir(tmp_path)
    recipes = {}
    for name in ("two", "one"):
        path = write_recipe(tmp_path, model, data, name, micro=1, accum=1, steps=4)
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        tree["data"] = {"packing": False}  # packed rows need flash-attention under Ulysses
        path.write_text(yaml.safe_dump(tree), encoding="utf-8")
        recipes[name] = path
    config = launch_config_path("ulysses")
    assert (
        yaml.safe_load(config.read_text(encoding="utf-8"))["parallelism_config"][
            "parallelism_config_sp_size"
        ]
        == 2
    )
    proc = launch(recipes["two"], config=config, entry=ENTRY)
    run_training(load_recipe(str(recipes["one"])))  # meanwhile, the single process
    finish(proc)
    # the gradient norm checks the gradient's scale, which Adam and clipping would hide
    logs = {n: read_log(tmp_path / f"out-{n}/train_log.jsonl") for n in ("one", "two")}
    want = {r["step"]: (r["loss"], r["grad_norm"]) for r in logs["one"]}
    got = {r["step"]: (r["loss"], r["grad_norm"]) for r in logs["two"]}
    assert sorted(want) == sorted(got) == [1, 2, 3, 4]
    for step, pair in want.items():
        assert got[step] == pytest.approx(pair, rel=1e-4, abs=1e-5), step
    w1, w2 = adapter_tensors(tmp_path / "out-one"), adapter_tensors(tmp_path / "out-two")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
