"""Batches for training: packed rows without cross-contamination, or padded length-grouped batches.

Usage::

    from longqa.train.packing import pack_examples, PackedCollator, PaddedCollator
    rows = pack_examples(examples, max_length=16384)      # list[PackedRow]
    batch = PackedCollator()(rows[:2])                    # input_ids, position_ids, labels
    batch = PackedCollator(sample_lengths=True)(rows[:2]) # + sample_lengths (sequence parallel)

A packed row concatenates several examples; ``position_ids`` restart at 0 for each example and no
``attention_mask`` is passed, so transformers derives per-sample attention from the position ids
(``masking_utils.find_packed_sequence_indices``): a block-diagonal causal mask for SDPA/eager on CPU,
and the varlen path (``cu_seqlens`` from position ids) for flash-attention on GPU. Each example's
first label is ``-100`` (see ``data.py``), so the causal shift never makes one sample predict the
next one's first token. Padding tokens form their own segment with labels ``-100``.

``PackedCollator(sample_lengths=True)`` (what ``--launch ulysses`` uses) also emits each token's
sample length ``[B, T]``, computed here on the whole row: the Ulysses data adapter then cuts it like
every ``[B, T]`` tensor, and each piece still knows its samples' whole lengths, which a dynamic RoPE
method needs (``longqa.train.distributed``). It is not a model input: ``LongqaTrainer``
pops it and hands it to the rotary modules (``longqa.patch.rope.sample_lengths_for``). It is only
emitted on request: a plain ``Trainer`` / ``model(**batch)`` would pass it to the forward.

``PaddedCollator`` right-pads rows and emits ``position_ids`` ``0..n-1`` per row, the pads
restarting at 0: a dynamic RoPE method then takes each row's scale from its own length rather than
from the batch width. The ``attention_mask`` still masks the pads (with a mask, transformers ignores
position ids for the attention pattern), so only the rotation of pad tokens changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from longqa.data.conversation import IGNORE_INDEX
from longqa.ops.rope_scaling import sample_lengths
from longqa.train.data import Example


@dataclass
class PackedRow:
    """Several examples side by side (``input_ids``/``labels``/``position_ids`` concatenated)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_samples: int

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_examples(examples: Sequence[Example], max_length: int) -> list[PackedRow]:
    """First-fit-decreasing bin packing of examples into rows of at most ``max_length`` tokens.

    Deterministic: ties keep the input order. Examples longer than ``max_length`` get a row each
    (truncation happens earlier, in tokenization).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    rows = []
    for members in bins:
        members.sort()
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in members:
            ex = examples[i]
            ids.extend(ex.input_ids)
            labels.extend([IGNORE_INDEX, *ex.labels[1:]])
            pos.extend(range(len(ex)))
        rows.append(PackedRow(ids, labels, pos, len(members)))
    return rows


def _as_lists(feature: Any) -> tuple[list[int], list[int]]:
    if isinstance(feature, dict):
        return list(feature["input_ids"]), list(feature["labels"])
    return list(feature.input_ids), list(feature.labels)


class PackedCollator:
    """Rows → ``input_ids``, ``position_ids``, ``labels`` (no attention mask, see module doc), and
    ``sample_lengths`` when asked (sequence parallelism)."""

    def __init__(
        self,
        pad_token_id: int = 0,
        pad_to_multiple_of: int | None = None,
        *,
        sample_lengths: bool = False,
    ):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.sample_lengths = sample_lengths

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        import torch

        rows = []
        for f in features:
            if isinstance(f, dict):
                rows.append((f["input_ids"], f["labels"], f["position_ids"]))
            else:
                rows.append((f.input_ids, f.labels, f.position_ids))
        width = _round_up(max(len(r[0]) for r in rows), self.pad_to_multiple_of)
        ids, labels, pos = [], [], []
        for r_ids, r_labels, r_pos in rows:
            pad = width - len(r_ids)
            ids.append(list(r_ids) + [self.pad_token_id] * pad)
            labels.append(list(r_labels) + [IGNORE_INDEX] * pad)
            pos.append(list(r_pos) + list(range(pad)))
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
        }
        if self.sample_lengths:
            batch["sample_lengths"] = sample_lengths(batch["position_ids"])
        return batch


class PaddedCollator:
    """Examples → right-padded ``input_ids``, ``attention_mask``, ``labels``, ``position_ids``
    (``0..n-1`` per row, the pads restarting at 0, see module doc).

    Rows split over GPUs (``pad_to_multiple_of`` = the split): DeepSpeed's Ulysses attention
    drops ``attention_mask``, which is harmless here: the pads are on the right and attention is
    causal, so no real token ever sees a pad (the pads' own outputs are not scored)."""

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        import torch

        pairs = [_as_lists(f) for f in features]
        width = _round_up(max(len(p[0]) for p in pairs), self.pad_to_multiple_of)
        ids, labels, mask, pos = [], [], [], []
        for p_ids, p_labels in pairs:
            pad = width - len(p_ids)
            ids.append(p_ids + [self.pad_token_id] * pad)
            labels.append(p_labels + [IGNORE_INDEX] * pad)
            mask.append([1] * len(p_ids) + [0] * pad)
            pos.append(list(range(len(p_ids))) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
        }


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return (n + multiple - 1) // multiple * multiple


class ListDataset:
    """A map-style dataset over examples or packed rows, as dicts (what ``Trainer`` expects)."""

    def __init__(self, items: Sequence[Example | PackedRow]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        it = self.items[i]
        d = {"input_ids": it.input_ids, "labels": it.labels}
        if isinstance(it, PackedRow):
            d["position_ids"] = it.position_ids
        return d

    def lengths(self) -> list[int]:
        return [len(it) for it in self.items]
