r"""``longqa`` under ``accelerate launch`` on CPU processes, where accelerate sets up the sharded
engines for GPU ranks only.

- FSDP: accelerate turns ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP`` only for accelerator
  devices (``AcceleratorState`` leaves a CPU launch as ``MULTI_CPU``, i.e. DDP), although
  ``torch.distributed.fsdp.fully_shard`` shards over gloo on CPUs. This entry makes that one
  promotion for CPU ranks.
- DeepSpeed: accelerate starts ``deepspeed.comm`` only for GPU ranks; ZeRO-3 starts it itself in
  ``deepspeed.initialize``, but Ulysses builds its groups before that, so it is started here.

Then the ``longqa`` CLI runs unchanged, so accelerate's preparation, the Trainer's checkpointing
and longqa's own code run under real sharding::

    accelerate launch --config_file recipes/launch/fsdp-qlora.yaml --num_processes 2 \
        tests/cpu_sharded_entry.py train --recipe r.yaml
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
