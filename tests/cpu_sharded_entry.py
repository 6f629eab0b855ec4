"""``longqa`` under ``accelerate launch`` on CPU processes, with FSDP switched on.

accelerate turns ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP`` only for accelerator
devices (``AcceleratorState`` leaves a CPU launch as ``MULTI_CPU``, i.e. DDP), although
``torch.distributed.fsdp`` shards over gloo on CPUs. This entry point makes that one promotion for
CPU ranks and then runs the ``longqa`` CLI unchanged, so the tests exercise accelerate's FSDP
preparation, the Trainer's FSDP checkpointing and longqa's own code under real sharding::

    accelerate launch --config_file fsdp-cpu.yaml --num_processes 2 tests/cpu_sharded_entry.py \
        train --recipe r.yaml
"""

from __future__ import annotations

import os


def promote_cpu_to_fsdp() -> None:
    """Make ``AcceleratorState`` use FSDP for a multi-process CPU launch that asks for it."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = patched


def init_deepspeed_comm() -> None:
    """Start ``deepspeed.comm`` on gloo, as accelerate does itself for GPU ranks only (Ulysses
    builds its sequence-parallel groups through it before ``deepspeed.initialize``)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        promote_cpu_to_fsdp()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        init_deepspeed_comm()
    from longqa.cli.app import main

    main()
