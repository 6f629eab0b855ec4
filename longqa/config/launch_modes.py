"""The registry of multi-GPU launch modes: one shipped accelerate config under ``recipes/launch/`` each.

Usage::

    from longqa.config.launch_modes import LAUNCH_MODES
    LAUNCH_MODES["fsdp"].config  # 'fsdp-qlora.yaml'

Read by :mod:`longqa.train.launch` (the ``accelerate launch`` command) and by the memory planner
(:mod:`longqa.plan.parallel`, the per-GPU estimate of each mode).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchMode:
    """One way of spreading training over GPUs."""

    config: str  # file under recipes/launch/
    needs: str | None  # python package it needs beyond the defaults
    sequence_parallel: bool  # --gpus also sets the sequence-parallel size
    summary: str


LAUNCH_MODES: dict[str, LaunchMode] = {
    "ddp": LaunchMode("ddp.yaml", None, False, "data parallel; every GPU holds the 4-bit base"),
    "fsdp": LaunchMode("fsdp-qlora.yaml", None, False, "FSDP-QLoRA: 4-bit weights sharded"),
    "deepspeed": LaunchMode(
        "deepspeed-zero3.yaml",
        "deepspeed",
        False,
        "DeepSpeed ZeRO-3: weights, grads, states sharded",
    ),
    "ulysses": LaunchMode(
        "deepspeed-ulysses.yaml", "deepspeed", True, "one sequence split over the GPUs (ALST)"
    ),
}
