"""What each GPU must see when one packed sequence is split over N GPUs (Ulysses / ALST).

Usage::

    from longqa.train.sequence_parallel import shard_batch, sample_lengths
    shard = shard_batch(batch, rank=1, world=4)   # input_ids, position_ids, shift_labels, sample_lengths

DeepSpeed's ``UlyssesSPDataLoaderAdapter`` (used by ``--launch ulysses``) cuts every ``[B, T, …]``
tensor of a batch into ``world`` contiguous pieces along ``T`` after shifting the labels, so the
last token of piece r still predicts the first token of piece r + 1. This module is the same
cut, written out so longqa's additions can be checked on a CPU:

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

from typing import Any

import torch

from longqa.ops.causal_lm import shift_labels
from longqa.ops.rope_scaling import sample_lengths

__all__ = ["sample_lengths", "shard_batch"]


def shard_batch(batch: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Piece ``rank`` of ``world`` of a packed batch, as the Ulysses data adapter cuts it.

    ``batch`` holds ``input_ids``, ``position_ids`` and ``labels`` ``[B, T]`` with ``T``
    divisible by ``world``; the piece holds the same keys (``labels`` replaced by the pre-shifted
    ``shift_labels``) plus ``sample_lengths``, each ``[B, T / world]``.
    """
    t = batch["input_ids"].shape[1]
    if t % world:
        raise ValueError(f"sequence length {t} is not divisible by {world} sequence-parallel ranks")
    full = {k: v for k, v in batch.items() if k != "labels"}
    full["shift_labels"] = shift_labels(batch["labels"])
    if "sample_lengths" not in full:  # the collator's, when it emitted them (same values)
        full["sample_lengths"] = sample_lengths(batch["position_ids"])
    piece = t // world
    cut = slice(rank * piece, (rank + 1) * piece)
    return {k: v[:, cut] if torch.is_tensor(v) and v.dim() >= 2 else v for k, v in full.items()}
