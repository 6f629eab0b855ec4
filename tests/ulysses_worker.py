"""One rank of the Ulysses check (run by ``test_train_ulysses.py`` under ``torchrun``, 2 CPU ranks).

Each rank builds the same tiny Llama (4 query / 2 key-value heads, SDPA) and first computes the
unsplit reference: longqa's loss and the gradients of one whole batch. Then DeepSpeed's ALST
pieces take over, as ``--launch ulysses`` uses them: ``UlyssesSPAttentionHF`` replaces the SDPA
attention (all-to-all: each rank attends over the whole sequence for half of the heads) and
``UlyssesSPDataLoaderAdapter`` gives each rank its half of the sequence with pre-shifted
``shift_labels``. The sequence-parallel loss is longqa's ``causal_lm_loss`` on each half, summed
over the ranks and divided by the ranks' total of scored tokens; the gradients are summed over
the ranks. Rank 0 writes both losses and the largest gradient difference to the JSON file::

    torchrun --nproc_per_node 2 tests/ulysses_worker.py out.json packed|unpacked
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

T = 32  # tokens per row: 16 per rank


def make_batch(packed: bool) -> dict[str, torch.Tensor]:
    """One row of T tokens; packed: samples of 20 and 12 tokens, positions restarting at 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 128, (1, T), generator=g)
    lengths = [20, 12] if packed else [T]
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = ids.clone()
    labels[pos == 0] = -100  # a sample's first token is never a target (as longqa's collator)
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def main(out: str, mode: str) -> None:
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import (
        UlyssesSPAttentionHF,
        UlyssesSPDataLoaderAdapter,
    )
    from tiny import tiny_llama_config
    from torch.utils.data import DataLoader
    from transformers import LlamaForCausalLM

    from longqa.ops.causal_lm import causal_lm_loss

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    cfg = tiny_llama_config(initializer_range=0.1, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).float().train()
    batch = make_batch(mode == "packed")

    total, n = causal_lm_loss(model, batch, chunked=True)  # the unsplit reference
    (total / n).backward()
    ref_loss = float(total / n)
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():  # one causal mask over the whole row, samples not separated
        ones = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
        total, n = causal_lm_loss(model, ones, chunked=True)
        unseparated_loss = float(total / n)

    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation="sdpa",
        sequence_parallel_size=world,
        micro_batch_size=1,
        seq_length_is_variable=True,
    )
    rows = [{k: v[0] for k, v in batch.items()}]
    dl = DataLoader(rows, batch_size=1)
    sp_rank = mpu.get_sequence_parallel_rank()
    shards = UlyssesSPDataLoaderAdapter(
        dl, sp_rank, mpu.get_sequence_parallel_group(), world, torch.device("cpu")
    )
    shard = next(iter(shards))  # rank r: tokens [r*T/world, (r+1)*T/world) of rank 0's row
    total, n = causal_lm_loss(model, shard, chunked=True)
    n_all = n.detach().clone().float()
    dist.all_reduce(n_all)
    (total / n_all).backward()
    loss = total.detach().clone()
    dist.all_reduce(loss)
    diffs, scale = [], []
    for k, p in model.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)
        diffs.append(float((g - ref_grads[k]).abs().max()))
        scale.append(float(ref_grads[k].abs().max()))
    if rank == 0:
        result = {
            "mode": mode,
            "ref_loss": ref_loss,
            "sp_loss": float(loss / n_all),
            "unseparated_loss": unseparated_loss,
            "shard_tokens": int(shard["input_ids"].shape[1]),
            "max_grad_diff": max(diffs),
            "max_grad": max(scale),
        }
        Path(out).write_text(json.dumps(result), encoding="utf-8")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
