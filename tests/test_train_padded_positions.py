"""Right-padded batches under a dynamic RoPE method: each row keeps its own scale (the collator's
position ids), so its real tokens get the logits and loss of the row run alone."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama_config
from transformers import LlamaForCausalLM

from longqa.ops.causal_lm import causal_lm_loss
from longqa.patch.rope import apply_rope_scaling
from longqa.train.data import IGNORE_INDEX, Example
from longqa.train.packing import PaddedCollator

L0 = 32
SHORT, LONG = 20, 100  # one row inside the original window, one far beyond it
DYNAMIC = [{"method": "dynamic-yarn", "margin": 8}, {"method": "dynamic-ntk", "factor": 4.0}]


def _example(n: int, seed: int) -> Example:
    ids = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return Example(ids, [IGNORE_INDEX] * (n // 2) + ids[n // 2 :])


def test_padded_collator_positions_restart_for_the_pads():
    batch = PaddedCollator(0)([_example(3, 0), _example(5, 1)])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]


@pytest.mark.parametrize("spec", DYNAMIC, ids=lambda s: s["method"])
def test_padded_rows_get_their_own_dynamic_scale(spec):
    torch.manual_seed(0)
    cfg = tiny_llama_config(
        max_position_embeddings=L0, pad_token_id=0, eos_token_id=2, initializer_range=0.1
    )
    model = apply_rope_scaling(LlamaForCausalLM(cfg).eval(), spec)  # head_dim 16
    examples = [_example(SHORT, 1), _example(LONG, 2)]
    batch = PaddedCollator(0)(examples)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        padded = model(**inputs).logits
        before_fix = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        alone = [model(torch.tensor([e.input_ids])).logits[0] for e in examples]
        loss = causal_lm_loss(model, batch, chunked=False)
        losses = [causal_lm_loss(model, PaddedCollator(0)([e]), chunked=False) for e in examples]
    # fp32, the same math per real token; only the attention's reduction length differs (padded
    # keys masked out): float32 rounding of logits of size ~3 (about 1e-6 measured)
    torch.testing.assert_close(padded[0, :SHORT], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], alone[1], rtol=1e-5, atol=1e-5)
    total = sum(s for s, _ in losses)
    assert int(loss[1]) == sum(int(n) for _, n in losses)
    torch.testing.assert_close(loss[0], total, rtol=1e-5, atol=1e-5)
    # without position ids every row took the width's (the long row's) scale: the short row moved
    assert (before_fix.logits[0, :SHORT] - alone[0]).abs().max() > 1e-2
    torch.testing.assert_close(before_fix.logits[1], alone[1], rtol=1e-5, atol=1e-5)
