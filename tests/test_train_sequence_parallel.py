"""Sequence-parallel pieces: global positions, packing boundaries and the dynamic RoPE scale."""

from __future__ import annotations

import torch

from longqa.ops.causal_lm import shift_labels
from longqa.ops.rope_scaling import compute_rope
from longqa.train.sequence_parallel import sample_lengths, shard_batch


def _packed_row() -> dict[str, torch.Tensor]:
    # two samples packed in one row: 5 tokens then 11 tokens; each sample's first label is -100
    lens = [5, 11]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    ids = torch.arange(100, 116)[None]
    labels = ids.clone()
    labels[0, 0] = labels[0, 5] = -100
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def test_sample_lengths_per_token():
    row = _packed_row()
    assert sample_lengths(row["position_ids"]).tolist() == [[5] * 5 + [11] * 11]
    # a row without restarts is one sample
    assert sample_lengths(torch.arange(7)[None]).tolist() == [[7] * 7]


def test_pieces_reassemble_the_shifted_row_with_global_positions():
    row = _packed_row()
    pieces = [shard_batch(row, r, 4) for r in range(4)]
    cat = {k: torch.cat([p[k] for p in pieces], dim=1) for k in pieces[0]}
    assert torch.equal(cat["position_ids"], row["position_ids"])
    assert torch.equal(cat["input_ids"], row["input_ids"])
    assert torch.equal(cat["shift_labels"], shift_labels(row["labels"]))
    # piece 1 (tokens 4..7) starts inside sample 1 and keeps global positions 4, 0, 1, 2
    assert pieces[1]["position_ids"].tolist() == [[4, 0, 1, 2]]
    # the last token of sample 1 predicts nothing of sample 2 (packing boundary respected)
    assert pieces[1]["shift_labels"][0, 0].item() == -100
    # the last token of piece 0 predicts the first token of piece 1 (same sample)
    assert pieces[0]["shift_labels"][0, -1].item() == row["input_ids"][0, 4].item()


def test_dynamic_scale_from_sample_lengths_matches_the_unsplit_row():
    params = {"method": "dynamic-yarn", "margin": 0}

    def inv(n: int) -> torch.Tensor:
        return compute_rope(
            params, head_dim=16, base=10000.0, original_max_position_embeddings=4, seq_len=n
        )[0]

    row = _packed_row()
    piece = shard_batch(row, 2, 4)  # tokens 8..11, all inside the 11-token sample
    local_len = int(piece["position_ids"].max()) + 1  # what the piece alone would infer: 7
    assert local_len == 7
    global_len = int(piece["sample_lengths"].max())
    assert global_len == 11
    assert not torch.allclose(inv(local_len), inv(11))  # the piece alone gets the scale wrong
    assert torch.equal(inv(global_len), inv(11))
