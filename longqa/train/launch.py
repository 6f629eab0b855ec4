"""`longqa train --launch MODE --gpus N`: the accelerate command that trains on several GPUs.

Usage::

    from longqa.train.launch import launch_command
    cmd = launch_command("ddp", gpus=4, train_argv=["--recipe", "llama3-8b-abf128k"])
    # ['accelerate', 'launch', '--config_file', '.../recipes/launch/ddp.yaml',
    #  '--num_processes', '4', '-m', 'longqa', 'train', '--recipe', 'llama3-8b-abf128k']

Each mode is a shipped accelerate config under ``recipes/launch/`` (one registry entry each):

- ``ddp`` — data parallel, each GPU holds the 4-bit base; the adapter's gradients are all-reduced.
- ``fsdp`` — FSDP-QLoRA: 4-bit weights stored in the compute dtype and sharded over the GPUs.
- ``deepspeed`` — DeepSpeed ZeRO-3, the same idea through DeepSpeed.
- ``ulysses`` — one sequence split over the GPUs (DeepSpeed Ulysses / ALST through accelerate's
  ``ParallelismConfig``), for contexts that no single GPU holds; ``--gpus`` is the split size.

The training code is the same in every mode: ``longqa train`` itself runs on each rank.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

from longqa.config.launch_modes import LAUNCH_MODES, LaunchMode
from longqa.config.recipe import recipes_dir
from longqa.core.errors import LongqaError

# flags of `longqa train` that choose the launch, not the training
_LAUNCH_FLAGS = {"--launch": 1, "--gpus": 1, "--print-command": 0}


def launch_config_path(mode: str) -> Path:
    """The shipped accelerate config of ``mode``."""
    return recipes_dir() / "launch" / _mode(mode).config


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``longqa train`` arguments without the launch-only flags (``--launch X``, ``--gpus N``…)."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _LAUNCH_FLAGS:
            skip = _LAUNCH_FLAGS[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


def launch_command(mode: str, gpus: int, train_argv: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that runs ``longqa train <train_argv>`` on ``gpus``."""
    spec = _mode(mode)
    if gpus < 1:
        raise LongqaError(f"--gpus: expected a positive number of GPUs, got {gpus}")
    if spec.sequence_parallel and gpus < 2:
        raise LongqaError("--launch ulysses: splitting a sequence needs --gpus 2 or more")
    cmd = ["accelerate", "launch", "--config_file", str(launch_config_path(mode))]
    cmd += ["--num_processes", str(gpus)]
    if spec.sequence_parallel:
        cmd += ["--parallelism_config_sp_size", str(gpus)]
    return [*cmd, "-m", "longqa", "train", *strip_launch_flags(train_argv)]


def check_can_launch(mode: str, gpus: int) -> None:
    """Raise a one-line error when this machine cannot run ``mode`` on ``gpus`` GPUs."""
    import torch

    spec = _mode(mode)
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise LongqaError(
            f"--launch {mode} needs the '{spec.needs}' package: pip install {spec.needs}"
        )
    have = torch.cuda.device_count()
    if have < gpus:
        raise LongqaError(f"--launch {mode} --gpus {gpus}: this machine has {have} CUDA GPU(s)")


def render(cmd: list[str]) -> str:
    """The command as one shell line."""
    return shlex.join(cmd)


def _mode(mode: str) -> LaunchMode:
    if mode not in LAUNCH_MODES:
        raise LongqaError(
            f"--launch: unknown mode '{mode}'; expected one of {', '.join(LAUNCH_MODES)}"
        )
    return LAUNCH_MODES[mode]
