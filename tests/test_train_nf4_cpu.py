"""4-bit training on CPU: an evaluation forward mid-training must not change the gradients.

bitsandbytes repacks a ``Linear4bit`` for its AVX512-BF16 inference kernel the first time it runs
in eval mode without gradients; that kernel has no backward, so the layer's input gradient would
silently vanish (``longqa.train.model.keep_4bit_trainable``). The comparison below fails without
the guard on a CPU with AVX512-BF16 (this project's development machines have it).
"""

from __future__ import annotations

import pytest
import torch
from train_fixtures import tiny_model_dir, tiny_recipe, write_jsonl

bnb = pytest.importorskip("bitsandbytes")


def _grads(model, ids):  # noqa: ANN001, ANN202
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_eval_forward_between_steps_keeps_every_gradient(tmp_path):
    from longqa.train.model import build_trainable_model, runtime_for

    model_dir = tiny_model_dir(tmp_path)
    recipe = tiny_recipe(model_dir, write_jsonl(tmp_path / "d.jsonl", []), tmp_path / "o")
    recipe = recipe.model_copy(
        update={"model": recipe.model.model_copy(update={"quantization": "nf4"})}
    )
    model, notes = build_trainable_model(recipe, runtime_for(recipe, "cpu"))
    assert any("4-bit NF4" in n for n in notes)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    before = _grads(model, ids)
    model.eval()
    with torch.no_grad():  # an evaluation probe while training
        model(input_ids=ids)
    after = _grads(model, ids)
    assert set(after) == set(before)
    for name, g in before.items():
        torch.testing.assert_close(after[name], g, msg=name)
    # the first layer's norm gets its gradient through the 4-bit q/k/v inputs: it must not vanish
    norm = next(g for n, g in after.items() if "layers.0.input_layernorm" in n)
    assert norm.abs().sum() > 0
