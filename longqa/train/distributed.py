"""Training across processes: rank facts from the launcher, rank-0 file writes, barriers.

``longqa train`` runs unchanged under ``torchrun`` and ``accelerate launch`` (DDP, FSDP, DeepSpeed):
both set ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``, and ``transformers.Trainer`` (through accelerate)
creates the process group. What longqa adds must then hold on every rank:

- each rank loads its 4-bit base on its own GPU (``device_for_rank``);
- the loss is token-weighted over all ranks and accumulation steps (the trainer scales by the
  number of processes, as ``Trainer.compute_loss`` does, because DDP averages gradients);
- under ``--launch ulysses`` (``sequence_parallel_size() > 1``) packed batches carry each
  token's sample length from the whole row (see *Sequence parallel* below);
- logs, the resolved recipe and the adapter bundle are written by rank 0 alone, the others wait
  (``on_main`` + ``barrier``); checkpoints are the Trainer's own (rank 0 writes, all resume);
- under FSDP2 / ZeRO-3 each rank holds a slice of every weight: all ranks gather the trainable
  ones (``full_trainable_state``) before rank 0 writes the adapter.

Usage::

    from longqa.train.distributed import dist_info, barrier
    info = dist_info()
    if info.is_main:
        write_files()
    barrier()

Sequence parallel: DeepSpeed's ``UlyssesSPDataLoaderAdapter`` (used by ``--launch ulysses``) cuts
every ``[B, T, …]`` tensor of a batch into ``world`` contiguous pieces along ``T`` after shifting the labels, so the
last token of piece r still predicts the first token of piece r + 1. What longqa adds so that
each piece still trains as the unsplit row would (the cut is checked on a CPU in
``tests/test_train_sequence_parallel.py``):

- **global positions**: a piece keeps its tokens' position ids from the whole packed row, so the
  RoPE patch rotates each shard with the positions the unsplit row would have;
- **packing boundaries**: labels are shifted on the whole row before the cut, and the collator's
  ``-100`` at each sample's first token keeps a sample from predicting the next one's tokens;
- **dynamic scale**: a dynamic RoPE method needs each sample's *whole* length, which a piece
  cannot see (its first sample may have started on another GPU, its last may end on another).
  ``sample_lengths`` (:func:`longqa.ops.rope_scaling.sample_lengths`, the function the rotary
  module uses on whole rows) is computed on the whole row and travels with the pieces (the adapter
  shards every ``[B, T]`` tensor of the batch). Under ``--launch ulysses`` the packing collator
  emits it (``PackedCollator(sample_lengths=True)``, from ``sequence_parallel_size() > 1``);
  ``LongqaTrainer.compute_loss`` pops it from the batch (the model's forward never receives it)
  and runs the forward inside :func:`longqa.patch.rope.sample_lengths_for`, so every dynamic
  rotary module computes each piece's scale from the unsplit row's lengths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the launch (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read the rank variables that torchrun, accelerate and deepspeed launchers export."""

    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name, "")
        return int(raw) if raw.strip().lstrip("-").isdigit() else default

    return DistInfo(_int("RANK", 0), _int("LOCAL_RANK", 0), _int("WORLD_SIZE", 1))


def device_for_rank(cuda: bool, info: DistInfo | None = None) -> str:
    """The device this rank trains on: its own GPU (``cuda:LOCAL_RANK``), else the CPU."""
    info = info or dist_info()
    if not cuda:
        return "cpu"
    return f"cuda:{info.local_rank}" if info.distributed else "cuda"


def weights_sharded() -> bool:
    """Whether this process runs under FSDP or DeepSpeed (``accelerate launch`` says so in the
    environment): 4-bit weights must then be stored in a floating dtype to be sharded."""
    flags = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    return any(os.environ.get(f, "").lower() in ("1", "true") for f in flags)


def sequence_parallel_size() -> int:
    """How many GPUs split each sequence: the size ``accelerate launch`` exports for
    ``--parallelism_config_sp_size`` (``--launch ulysses``); 1 when sequences are not split."""
    if os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "").lower() != "true":
        return 1
    raw = os.environ.get("PARALLELISM_CONFIG_SP_SIZE", "1").strip()
    return max(1, int(raw)) if raw.isdigit() else 1


def barrier() -> None:
    """Wait for every rank when a process group exists; a no-op otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ranks_sum(value: int | float) -> float:
    """Sum of ``value`` over ranks (the value itself in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def full_trainable_state(model: Any) -> dict[str, Any] | None:
    """Whole copies (on CPU) of ``model``'s trainable tensors when an engine shards them; else None.

    Under FSDP2 (``fully_shard``) every parameter is a ``DTensor`` holding this rank's slice; under
    DeepSpeed ZeRO-3 a partitioned parameter is empty outside its module's forward. The adapter
    must then be gathered before rank 0 writes it: **every rank calls this** (each gather is a
    collective, made in the same order on all ranks). Only the trainable tensors (LoRA,
    ``modules_to_save``) are gathered, never the frozen base. ``None`` (nothing sharded) lets the
    writer read the model itself, as DDP and a single process do.
    """
    from torch.distributed.tensor import DTensor

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in params):  # ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().cpu().clone() for n, p in params}
    if not any(isinstance(p, DTensor) for _, p in params):
        return None
    out = {}
    for name, p in params:
        full = p.full_tensor() if isinstance(p, DTensor) else p
        out[name] = full.detach().cpu().clone()
    return out
