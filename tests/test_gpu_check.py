"""The GPU check (benchmarks/gpu_check.sh and its Python stages) runs end to end on CPU (dry run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_modules import bench_fixture, load_bench

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


gpu_train = bench_fixture("gpu_train", name="gpu_train")


def _env():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    return env


def test_dry_run_writes_every_stage(tmp_path, gpu_train):
    out = tmp_path / "gc"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "all", "--dry-run", "--out", str(out)],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    env_md = (out / "env.md").read_text()
    assert f"| torch | {torch.__version__} |" in env_md and "dry run" in env_md
    kernels = (out / "kernels.md").read_text()
    assert "| transformers eager |" in kernels and "| longqa fused (Triton) |" in kernels
    assert "| longqa chunked (" in kernels and "| plain logits + F.cross_entropy |" in kernels
    liger = gpu_train.liger_available()
    assert ("| Liger-Kernel |" in kernels) == bool(liger)
    assert ("| Liger fused linear CE |" in kernels) == bool(liger)
    train = (out / "train.md").read_text()
    for variant in gpu_train.VARIANTS:
        if variant != "transformers+Liger" or liger:
            assert f"| {variant} | " in train, variant
    assert "failed" not in train and "OOM" not in train and "skipped" not in train
    runs = len(gpu_train.VARIANTS) - (not liger)
    assert len((out / "train.jsonl").read_text().splitlines()) == 2 * runs  # two lengths
    longest = (out / "longest.md").read_text()
    assert "| tiny | longqa all | 64 | cap |" in longest  # cap 64 in the dry run
    assert "| tiny | longqa all + bf16 residual | 64 | cap |" in longest
    report = (out / "gpu_check.md").read_text()
    assert all(s in report for s in ("### Environment", "### RoPE", "### Training step"))


def test_find_longest_stops_on_time_box(gpu_train):
    gpu_longest = load_bench("gpu_longest")
    seen: list[int] = []

    def fits(n: int):
        seen.append(n)
        return None if n > 40000 else True

    assert gpu_longest.find_longest(fits, 16384, 4096, 1 << 20) == (32768, "time box")
    assert gpu_longest.find_longest(lambda n: n <= 100_000, 16384, 4096, 1 << 20) == (
        98304,
        "OOM bracket",
    )
    assert gpu_longest.find_longest(lambda n: True, 16, 16, 64) == (64, "cap")
    assert gpu_longest.find_longest(lambda n: False, 16, 16, 64) == (0, "OOM at start")
    sys.modules.pop("gpu_longest", None)


def test_planned_peak_is_the_planner_without_context(gpu_train):
    from longqa.config.recipe import load_recipe
    from longqa.plan.memory import GB, estimate_bytes

    env = gpu_train.Env("cuda", dry_run=False)
    got = gpu_train.planned_gib("llama3-8b", "longqa all", 65536, env)
    recipe = load_recipe(
        "llama3-8b-abf128k",
        ["lora.trainable_norms=false", "kernels.tiled_mlp=true", "train.loss_chunk_size=0",
         "model.attn_implementation=sdpa", "kernels.lean_rmsnorm=true",
         "kernels.tiled_mlp_norm=true", "kernels.lean_lora_dropout=true"],
    )  # fmt: skip
    items = estimate_bytes(recipe, gpu_train.model_shape("llama3-8b"), 65536)
    assert got == pytest.approx((sum(items.values()) - items["CUDA context + slack"]) / GB)
    assert gpu_train.planned_gib("llama3-8b", "transformers+Liger", 65536, env) is None
    plain = gpu_train.planned_gib("llama3-8b", "transformers+peft", 65536, env)
    assert plain > got
    assert gpu_train.planned_gib("llama3-8b", "longqa all + bf16 residual", 65536, env) < got


@pytest.mark.slow
def test_shell_script_dry_run(tmp_path):
    out = tmp_path / "sh"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run"],
        capture_output=True, text=True, cwd=ROOT,
        env={**_env(), "GPU_CHECK_OUT": str(out), "PYTHON": sys.executable},
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = [ln.split("\t") for ln in (out / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["doctor", "cuda-tests", "env", "kernels", "train", "longest"]
    assert all(s[1] == "0" for s in stages), stages
    report = (out / "gpu_check.md").read_text()
    assert "### Stages" in report and "### Longest trainable length" in report
