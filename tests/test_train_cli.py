"""`longqa train` command line: plan output, a tiny run, one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from train_fixtures import tiny_model_dir, toy_sft_rows, write_jsonl

LONGQA = [sys.executable, "-m", "longqa"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LONGQA, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_plan_prints_verdict():
    res = _run("train", "--recipe", "qwen14b-yarn32k", "--plan", "--gpu-mem", "24")
    assert res.returncode == 0, res.stderr
    assert "does not fit in a 24 GB GPU" in " ".join(res.stdout.split())
    assert "checkpointed activations" in res.stdout


def test_cli_trains_tiny_recipe_with_data_out_set(tmp_path):
    model_dir = tiny_model_dir(tmp_path)
    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(4))
    recipe = {
        "name": "tiny",
        "model": {"name": str(model_dir), "dtype": "float32", "quantization": "none"},
        "lora": {"r": 4, "alpha": 8},
        "train": {
            "optim": "adamw_torch",
            "grad_accum": 1,
            "max_length": 64,
            "phases": [{"name": "sft", "kind": "sft", "datasets": [{"path": "gone"}], "steps": 50}],
        },
    }
    rpath = tmp_path / "tiny.yaml"
    rpath.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    res = _run(
        "train", "--recipe", str(rpath), "--data", str(data), "--out", str(out),
        "--max-steps", "2", "--set", "train.lr=1e-3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(out)
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["train"]["phases"][0]["steps"] == 2
    assert (out / "adapter_model.safetensors").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with open(bad, "a") as fh:
        fh.write("{broken\n")
    model_dir = tiny_model_dir(tmp_path)
    rpath = tmp_path / "r.yaml"
    rpath.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "model": {"name": str(model_dir), "quantization": "none"},
                "train": {"phases": [{"name": "s", "kind": "sft", "steps": 1}]},
            }
        )
    )
    for data, expected in ((tmp_path / "none.jsonl", "dataset not found"), (bad, "bad.jsonl:2")):
        res = _run(
            "train", "--recipe", str(rpath), "--data", str(data), "--out", str(tmp_path / "o")
        )
        assert res.returncode == 2
        err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and expected in err[0], res.stderr[-2000:]
        assert "Traceback" not in res.stderr
