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
from dist_fixtures import REPO, free_port

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
