"""bf16 residual quality benchmark: the report's paired differences, and held-out rows by file."""

from __future__ import annotations

import argparse

import pytest
from bench_modules import bench_fixture

from longqa.core.paths import shared_essays

bench = bench_fixture("bench_bf16_residual_quality")


def _arm(name, base, after, train):
    return {"arm": name, "base": base, "after": after, "train_loss": train,
            "grad_norm": [1.0, 0.5], "s_per_step": 2.0}  # fmt: skip


def test_report_pairs_rows_and_compares_with_the_seed_spread(bench):
    res = {
        "fp32 stream": _arm("fp32 stream", [3.0, 4.0], [2.0, 3.0], [3.0, 2.5]),
        "fp32 stream, seed 1": _arm("fp32 stream, seed 1", [3.0, 4.0], [2.1, 3.1], [3.2, 2.4]),
        "bf16 stream": _arm("bf16 stream", [3.0, 4.2], [2.0, 3.2], [3.0, 2.7]),
    }
    args = argparse.Namespace(steps=2, tokens=64, lr=1e-4)
    text = bench.markdown(res, args, "python benchmarks/bench_bf16_residual_quality.py")
    assert "| fp32 stream | 3.5000 | 2.5000 | 1.0000 [1.0000, 1.0000] |" in text
    assert "| bf16 stream | 3.6000 | 2.6000 | 1.0000 [1.0000, 1.0000] |" in text
    assert "numerics alone) | 0.1000 [0.0000, 0.2000] |" in text
    assert "same seed) | 0.1000 [0.0000, 0.2000] |" in text
    assert "(run-to-run spread) | 0.1000 [0.1000, 0.1000] |" in text
    assert "bf16 stream 0.1000 (max 0.2000); fp32 seed 1 0.1500 (max 0.2000)" in text
    with pytest.raises(ValueError):  # rows are paired: the arms must score the same rows
        bench.paired([1.0, 2.0], [1.0])


@pytest.mark.skipif(shared_essays() is None, reason="needs the essays corpus (../shared/corpora)")
def test_held_out_rows_come_from_other_essays(bench):
    class Words:  # a stand-in tokenizer: one id per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [hash(w) % 1000 for w in text.split()]}

    train, held = bench.essay_rows(Words(), 64, 10, 4)
    assert len(train) == 10 and len(held) == 4
    assert all(len(r) == 64 for r in train + held)
    assert not {tuple(r) for r in train} & {tuple(r) for r in held}
    with pytest.raises(SystemExit, match="only .* rows of 64 tokens, need 100000"):
        bench.essay_rows(Words(), 64, 10, 100_000)
