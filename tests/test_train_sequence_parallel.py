"""Sequence-parallel pieces: global positions, packing boundaries and the dynamic RoPE scale.

``shard_batch`` is the cut DeepSpeed's ``UlyssesSPDataLoaderAdapter`` makes (``--launch ulysses``),
written out so that what longqa adds to a batch can be checked on a CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from longqa.ops.causal_lm import shift_labels
from longqa.ops.rope_scaling import compute_rope, sample_lengths


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


# ---- the RoPE patch consumes the whole row's sample lengths (tiny random Llama, head_dim 16)

L0 = 16  # original window: samples of 11 and 21 tokens get different dynamic scales
DYNAMIC = [{"method": "dynamic-yarn", "margin": 0}, {"method": "dynamic-ntk", "factor": 4.0}]


def _tiny_llama(spec):
    from tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    from longqa.patch.rope import apply_rope_scaling

    torch.manual_seed(0)
    # initializer_range 0.1 (as the trainer tests' model): logits far enough from uniform that
    # the loss feels the RoPE scale
    cfg = tiny_llama_config(
        max_position_embeddings=L0, pad_token_id=0, eos_token_id=2, initializer_range=0.1
    )
    model = LlamaForCausalLM(cfg).eval()  # hidden 64, 4 heads: head_dim 16
    return apply_rope_scaling(model, spec)


def _row(lens: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    ids = torch.randint(3, 128, pos.shape, generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[0, 0] = labels[0, lens[0]] = -100
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


@pytest.mark.parametrize("spec", DYNAMIC, ids=lambda s: s["method"])
def test_piece_rotary_with_row_sample_lengths_equals_the_unsplit_row(spec):
    from longqa.patch.rope import sample_lengths_for

    model = _tiny_llama(spec)
    rotary = model.model.rotary_emb
    row = _row([11, 21])  # T = 32
    x = torch.zeros(1, 32, 64)
    full_cos, full_sin = rotary(x, row["position_ids"])
    differs = []
    for rank in range(4):
        piece = shard_batch(row, rank, 4)
        cut = slice(8 * rank, 8 * rank + 8)
        with sample_lengths_for(model, piece["sample_lengths"]) as n:
            assert n == 1 and rotary.given_lengths is piece["sample_lengths"]
            cos, sin = rotary(x[:, cut], piece["position_ids"])
        assert rotary.given_lengths is None  # cleared on exit
        torch.testing.assert_close(cos, full_cos[:, cut], rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, full_sin[:, cut], rtol=0, atol=1e-6)
        # without the lengths the piece infers them from its own runs of positions
        alone_cos, _ = rotary(x[:, cut], piece["position_ids"])
        differs.append(float((alone_cos - full_cos[:, cut]).abs().max()))
    # piece 1 holds sample 2's first 5 tokens (inferred 5, not 21), piece 2 its tokens 5..12
    # (inferred 13); piece 3 ends sample 2 (its run's last position is right)
    assert differs[1] > 1e-3 and differs[2] > 1e-3 and differs[3] == 0.0


def test_sample_lengths_of_another_shape_is_a_one_line_error():
    from longqa.core.errors import LongqaError
    from longqa.patch.rope import sample_lengths_for

    model = _tiny_llama(DYNAMIC[0])
    row = _row([11, 21])
    with sample_lengths_for(model, torch.full((1, 8), 11)):
        with pytest.raises(LongqaError, match=r"^sample_lengths \(1, 8\) do not match") as err:
            model(input_ids=row["input_ids"], position_ids=row["position_ids"])
    assert "\n" not in str(err.value)
    assert model.model.rotary_emb.given_lengths is None


def test_trainer_loss_hands_sample_lengths_to_rope_not_to_the_forward(tmp_path):
    from transformers import TrainingArguments

    from longqa.train.trainer import LongqaTrainer

    model = _tiny_llama(DYNAMIC[0])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LongqaTrainer(model=model, args=args, chunked=False)
    seen: list[set[str]] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    row = _row([21, 11], seed=1)  # piece 0 (tokens 0..7) lies inside the 21-token sample
    piece = shard_batch(row, 0, 4)
    inferred = {k: v for k, v in piece.items() if k != "sample_lengths"}
    # piece 0 attends to nothing outside itself (causal), so the unsplit row scored on piece 0's
    # targets alone is the reference
    full = {k: v for k, v in row.items() if k != "labels"}
    full["shift_labels"] = shift_labels(row["labels"])
    full["shift_labels"][:, 8:] = -100
    with torch.no_grad():
        with_lengths = trainer.compute_loss(model, piece)
        without = trainer.compute_loss(model, inferred)
        unsplit = trainer.compute_loss(model, full)
    assert "sample_lengths" in piece  # the caller's batch is left as it was
    assert seen and all("sample_lengths" not in kw for kw in seen)
    torch.testing.assert_close(with_lengths, unsplit, rtol=1e-5, atol=1e-5)
    assert abs(float(without - unsplit)) > 1e-2  # the bug: a scale for 8 tokens, not 21


def test_collator_sample_lengths_are_each_packed_samples_token_count():
    from longqa.train.data import Example
    from longqa.train.packing import PackedCollator, pack_examples

    examples = [Example(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in (9, 1, 14, 5)]
    rows = pack_examples(examples, max_length=16)
    batch = PackedCollator(0, pad_to_multiple_of=8, sample_lengths=True)(rows)
    assert "sample_lengths" not in PackedCollator(0)(rows)
    # restart-at-0 counting (each sample's tokens, the padding a sample of its own) agrees with
    # the rotary's runs of consecutive positions on the collator's rows
    rows_ = zip(batch["position_ids"].tolist(), batch["sample_lengths"].tolist(), strict=True)
    for pos, lengths in rows_:
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        want = [b - a for a, b in zip(starts, starts[1:], strict=False) for _ in range(b - a)]
        assert lengths == want
    assert batch["sample_lengths"].shape == batch["input_ids"].shape == (2, 16)
    assert sorted(set(batch["sample_lengths"].flatten().tolist())) == [1, 2, 5, 9, 14]


def test_ulysses_launch_makes_the_packing_collator_emit_sample_lengths(monkeypatch, tmp_path):
    from train_fixtures import tiny_recipe, tiny_tokenizer, toy_sft_rows, write_jsonl

    from longqa.train.distributed import sequence_parallel_size
    from longqa.train.phases import build_phase_dataset

    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(8))
    recipe = _packed_recipe(tiny_recipe(tmp_path / "model", data, tmp_path / "out"))
    # packed rows split over ranks are refused unless the attention is flash-attention
    model = recipe.model.model_copy(update={"attn_implementation": "flash_attention_2"})
    recipe = recipe.model_copy(update={"model": model})

    def collate():
        dataset, collator, _ = build_phase_dataset(recipe, recipe.train.phases[0], tiny_tokenizer())
        return collator([dataset[i] for i in range(len(dataset))])

    plain = collate()
    assert sequence_parallel_size() == 1 and "sample_lengths" not in plain
    assert plain["input_ids"].shape[1] % 4 != 0
    monkeypatch.setenv("PARALLELISM_CONFIG_SP_SIZE", "4")
    assert sequence_parallel_size() == 1  # accelerate's parallelism config not in use
    monkeypatch.setenv("ACCELERATE_USE_PARALLELISM_CONFIG", "true")  # accelerate launch sets both
    assert sequence_parallel_size() == 4
    batch = collate()
    assert batch["input_ids"].shape[1] % 4 == 0  # the data adapter adds no padding of its own
    assert torch.equal(batch["sample_lengths"], sample_lengths(batch["position_ids"]))


def _packed_recipe(recipe, packing: bool = True):
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": packing})})


def _ulysses_env(monkeypatch, sp: int = 2) -> None:
    monkeypatch.setenv("ACCELERATE_USE_PARALLELISM_CONFIG", "true")
    monkeypatch.setenv("PARALLELISM_CONFIG_SP_SIZE", str(sp))


@pytest.mark.parametrize("attn", ["auto", "sdpa", "eager"])
def test_packed_rows_split_over_ranks_without_flash_attention_are_refused(
    monkeypatch, tmp_path, attn
):
    from train_fixtures import tiny_recipe, tiny_tokenizer, toy_sft_rows, write_jsonl

    from longqa.core.errors import LongqaError
    from longqa.train.phases import build_phase_dataset

    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(4))
    recipe = _packed_recipe(tiny_recipe(tmp_path / "model", data, tmp_path / "out"))
    model = recipe.model.model_copy(update={"attn_implementation": attn})
    recipe = recipe.model_copy(update={"model": model})
    phase = recipe.train.phases[0]
    build_phase_dataset(recipe, phase, tiny_tokenizer())  # one process: packing is fine
    _ulysses_env(monkeypatch)
    # "auto" on this CPU machine is SDPA: DeepSpeed's Ulysses attention drops the mask and SDPA
    # then lets a packed sample attend to the samples before it (tests/test_train_ulysses.py)
    with pytest.raises(LongqaError, match="flash-attention") as err:
        build_phase_dataset(recipe, phase, tiny_tokenizer())
    msg = str(err.value)
    assert "\n" not in msg
    assert "flash_attention_2" in msg and "data.packing: false" in msg
    # unpacked rows are right-padded: causal attention never lets a real token see a pad
    build_phase_dataset(_packed_recipe(recipe, False), phase, tiny_tokenizer())


def test_unpacked_rows_split_over_ranks_are_padded_to_a_multiple_of_the_split(
    monkeypatch, tmp_path
):
    from train_fixtures import tiny_recipe, tiny_tokenizer, toy_sft_rows, write_jsonl

    from longqa.train.phases import build_phase_dataset

    data = write_jsonl(tmp_path / "toy.jsonl", toy_sft_rows(8))
    recipe = tiny_recipe(tmp_path / "model", data, tmp_path / "out")
    assert not recipe.data.packing

    def widths() -> set[int]:
        dataset, collator, _ = build_phase_dataset(recipe, recipe.train.phases[0], tiny_tokenizer())
        return {collator([dataset[i]])["input_ids"].shape[1] for i in range(len(dataset))}

    assert any(w % 4 for w in widths())
    _ulysses_env(monkeypatch, 4)
    # DeepSpeed's data adapter: "batch's seqlen=51 isn't divisible by sp-size=2" otherwise
    assert all(w % 4 == 0 for w in widths())


def test_trainer_counts_the_label_tokens_of_sequence_parallel_pieces(tmp_path):
    from transformers import TrainingArguments

    from longqa.train.trainer import LongqaTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LongqaTrainer(model=_tiny_llama(DYNAMIC[0]), args=args, chunked=False)
    row = _row([11, 21])
    pieces = [shard_batch(row, r, 2) for r in range(2)]
    for p in pieces:
        p.pop("labels", None)  # DeepSpeed's adapter hands out shift_labels only
    # one rank's accumulation window of two pieces: every scored target of the row, once
    n = trainer._get_num_items_in_batch(pieces, torch.device("cpu"))
    assert int(n) == int((shift_labels(row["labels"]) != -100).sum()) == 30
    # batches with labels: the Trainer's own count (labels shifted by one)
    assert int(trainer._get_num_items_in_batch([row], torch.device("cpu"))) == 30
