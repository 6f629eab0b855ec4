"""`longqa train --launch/--gpus`: accelerate commands, shipped launch configs, N-GPU plans."""

from __future__ import annotations

import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from typer.testing import CliRunner

from longqa.cli.app import app
from longqa.config.recipe import load_recipe
from longqa.core.errors import LongqaError
from longqa.plan.memory import plan_memory
from longqa.plan.parallel import per_gpu_bytes, plan_parallel
from longqa.train.launch import (
    LAUNCH_MODES,
    check_can_launch,
    launch_command,
    launch_config_path,
    strip_launch_flags,
)


@pytest.mark.parametrize("mode", sorted(LAUNCH_MODES))
def test_every_shipped_launch_config_loads_in_accelerate(mode):
    cfg = load_config_from_file(str(launch_config_path(mode)))
    want = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED", "ulysses": "DEEPSPEED"}
    assert str(cfg.distributed_type).split(".")[-1] == want[mode]
    if mode == "ulysses":
        assert cfg.parallelism_config["parallelism_config_sp_backend"] == "deepspeed"
    if mode == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2  # fully_shard: runs on CPU ranks too
        assert cfg.fsdp_config["fsdp_reshard_after_forward"] is True


def test_launch_command_reruns_train_without_the_launch_flags():
    argv = [
        "--recipe",
        "r",
        "--launch",
        "ddp",
        "--gpus=4",
        "--set",
        "train.lr=1",
        "--print-command",
    ]
    assert strip_launch_flags(argv) == ["--recipe", "r", "--set", "train.lr=1"]
    cmd = launch_command("ddp", 4, argv)
    assert cmd[:2] == ["accelerate", "launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--config_file") + 1].endswith("recipes/launch/ddp.yaml")
    assert cmd[-7:] == ["-m", "longqa", "train", "--recipe", "r", "--set", "train.lr=1"]
    assert "--parallelism_config_sp_size" not in cmd
    sp = launch_command("ulysses", 8, ["--recipe", "r"])
    assert sp[sp.index("--parallelism_config_sp_size") + 1] == "8"


def test_launch_errors_are_one_line():
    with pytest.raises(LongqaError, match="unknown mode 'zero9'"):
        launch_command("zero9", 2, [])
    with pytest.raises(LongqaError, match="needs --gpus 2 or more"):
        launch_command("ulysses", 1, [])
    with pytest.raises(LongqaError, match="CUDA GPU"):
        check_can_launch("ddp", 64)


def test_cli_prints_the_command(monkeypatch):
    argv = ["longqa", "train", "--recipe", "smollm2-135m-yarn16k", "--launch", "fsdp", "--gpus",
            "2", "--print-command"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    res = CliRunner().invoke(app, argv[1:])
    assert res.exit_code == 0, res.output
    assert "accelerate launch --config_file" in res.output
    assert "fsdp-qlora.yaml --num_processes 2 -m longqa train --recipe smollm2-135m-yarn16k" in (
        " ".join(res.output.split())
    )


def test_parallel_plan_divides_what_each_mode_shards():
    rec = load_recipe("llama3-8b-abf128k")
    single = plan_memory(rec, gpu_mem_gb=80)
    rows = {r.mode: r for r in plan_parallel(rec, gpus=8, gpu_mem_gb=80)}
    assert set(rows) == set(LAUNCH_MODES)
    # DDP replicates: the same per-GPU memory and longest context as one GPU
    assert rows["ddp"].per_gpu_gb == pytest.approx(single.total_gb, rel=1e-9)
    assert rows["ddp"].max_fit_len == single.max_fit_len
    # ZeRO-3 / FSDP shard the weights only; Ulysses also splits the sequence
    assert rows["fsdp"].per_gpu_gb < rows["ddp"].per_gpu_gb
    assert rows["ulysses"].max_fit_len > 4 * rows["fsdp"].max_fit_len
    # with one GPU there is no sequence to split
    assert "ulysses" not in {r.mode for r in plan_parallel(rec, gpus=1)}
    from longqa.plan.memory import model_shape

    shape, _ = model_shape(rec)
    assert per_gpu_bytes(rec, shape, 65536, "ulysses", 2) < per_gpu_bytes(
        rec, shape, 65536, "deepspeed", 2
    )
