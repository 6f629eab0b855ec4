"""The one causal-LM loss: chunked == plain == transformers' loss (value and gradient), through peft;
packed rows == per-sample runs (no leakage)."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import tiny_model_dir

from longqa.ops.causal_lm import causal_lm_loss
from longqa.train.data import IGNORE_INDEX, Example
from longqa.train.packing import PackedCollator, PaddedCollator, pack_examples


def _model(tmp_path, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir(tmp_path)
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation=attn)
    return m.eval()


def _examples(seed=0, lengths=(7, 12, 5, 9)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(4, 128, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]  # "assistant" = second half
        out.append(Example(ids, labels))
    return out


def test_chunked_loss_matches_plain_loss_and_gradients(tmp_path):
    from peft import LoraConfig, get_peft_model

    from longqa.models.load import peft_wrapping

    torch.manual_seed(0)
    with peft_wrapping():  # peft probes a deprecated transformers name
        model = get_peft_model(_model(tmp_path), LoraConfig(r=4, target_modules="all-linear"))
    for n, p in model.named_parameters():  # non-zero B so LoRA gradients flow everywhere
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    batch = PaddedCollator(0)(_examples())
    results = []
    for chunked in (False, True):
        model.zero_grad()
        total, n = causal_lm_loss(model, batch, chunk_size=5, chunked=chunked)
        (total / n).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((total.detach(), n, grads))
    (t0, n0, g0), (t1, n1, g1) = results
    assert n0 == n1 == sum(1 for e in _examples() for lab in e.labels[1:] if lab != IGNORE_INDEX)
    torch.testing.assert_close(t1, t0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)
    # and both match the model's own loss (HF shifts labels itself)
    ref = model(**batch).loss
    torch.testing.assert_close(t0 / n0, ref.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_token_weighted_mean_of_samples_alone(tmp_path, attn):
    model = _model(tmp_path, attn)
    examples = _examples(seed=1)
    rows = pack_examples(examples, max_length=64)
    assert len(rows) == 1 and rows[0].n_samples == 4
    assert rows[0].position_ids[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    with torch.no_grad():
        packed_sum, packed_n = causal_lm_loss(model, PackedCollator(0)(rows), chunked=False)
        sums, counts = [], []
        for ex in examples:
            s, n = causal_lm_loss(model, PaddedCollator(0)([ex]), chunked=False)
            sums.append(s)
            counts.append(n)
    # "mean" = token-weighted: every label token counts once, whichever sample it is in
    expected = torch.stack(sums).sum() / torch.stack(counts).sum()
    assert int(packed_n) == int(sum(counts))
    torch.testing.assert_close(packed_sum / packed_n, expected, rtol=1e-5, atol=1e-6)
    # sanity: without the position-id reset the samples would see each other
    leaky = PackedCollator(0)(rows)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    with torch.no_grad():
        s, n = causal_lm_loss(model, leaky, chunked=False)
    assert abs(float(s / n) - float(expected)) > 1e-4


def test_packing_two_rows_with_padding(tmp_path):
    model = _model(tmp_path)
    examples = _examples(seed=2, lengths=(20, 15, 9, 4))
    rows = pack_examples(examples, max_length=24)
    assert [len(r) for r in rows] == [24, 24]  # first-fit decreasing: 20+4, 15+9
    assert sum(r.n_samples for r in rows) == 4
    batch = PackedCollator(0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    with torch.no_grad():
        s, n = causal_lm_loss(model, batch, chunked=True, chunk_size=7)
        ref = [causal_lm_loss(model, PaddedCollator(0)([e]), chunked=False) for e in examples]
    expected = sum(r[0] for r in ref) / sum(r[1] for r in ref)
    torch.testing.assert_close(s / n, expected, rtol=1e-5, atol=1e-6)


def _family_model(family: str, seed: int = 0):
    from tiny import TINY_SHAPE
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**TINY_SHAPE)).eval()


def _ids(shape, seed):
    return torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_chunked_loss_matches_hf_loss_and_grads(family):
    ids = _ids((2, 10), seed=5)
    labels = ids.clone()
    labels[:, :4] = -100  # prompt tokens are not counted
    ref = _family_model(family).train()
    ref(input_ids=ids, labels=labels).loss.backward()
    model = _family_model(family).train()
    total, n = causal_lm_loss(model, {"input_ids": ids, "labels": labels}, chunk_size=7)
    loss = total / n
    loss.backward()
    torch.testing.assert_close(loss, ref(input_ids=ids, labels=labels).loss, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_chunked_loss_through_peft_lora():
    from peft import LoraConfig, get_peft_model

    from longqa.models.load import peft_wrapping

    ids = _ids((1, 9), seed=6)
    base = _family_model("llama")
    with peft_wrapping():  # peft probes a deprecated transformers name
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    expected = model(input_ids=ids, labels=ids).loss
    total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids})
    loss = total / n
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    assert model.get_base_model().lm_head.weight.grad is None  # frozen head: no gradient


def test_adapted_head_needs_the_full_logits_path():
    from peft import LoraConfig, get_peft_model

    from longqa.core.errors import LongqaError
    from longqa.models.load import peft_wrapping

    ids = _ids((1, 9), seed=7)
    with peft_wrapping():  # peft probes a deprecated transformers name
        model = get_peft_model(_family_model("llama"), LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(LongqaError, match="set kernels.chunked_ce: false"):
        causal_lm_loss(model, {"input_ids": ids, "labels": ids})
    total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunked=False)
    torch.testing.assert_close(total / n, model(input_ids=ids, labels=ids).loss)


@pytest.mark.parametrize("chunked_ce", [True, False])
def test_recipe_switch_selects_the_training_loss_path(tmp_path, monkeypatch, chunked_ce):
    from train_fixtures import tiny_recipe, toy_sft_rows, write_jsonl

    from longqa.ops import chunked_ce as chunked_module
    from longqa.train.trainer import run_training

    calls = []
    real = chunked_module.chunked_linear_cross_entropy

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked_module, "chunked_linear_cross_entropy", spy)
    data = write_jsonl(tmp_path / "d.jsonl", toy_sft_rows(8))
    recipe = tiny_recipe(tiny_model_dir(tmp_path), data, tmp_path / "o", phases=[
        {"name": "sft", "kind": "sft", "datasets": [{"path": str(data)}], "steps": 1}
    ])  # fmt: skip
    recipe = recipe.model_copy(
        update={"kernels": recipe.kernels.model_copy(update={"chunked_ce": chunked_ce})}
    )
    run_training(recipe)
    assert bool(calls) is chunked_ce
