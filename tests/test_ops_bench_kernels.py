"""The kernel benchmark script: search logic, table output, CPU behaviour (no GPU numbers here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_find_longest_doubles_then_bisects(bench):
    calls: list[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n <= 100_000

    assert bench.find_longest(fits, 16384, 4096, 1 << 20) == 98304  # largest 4096-multiple <= 1e5
    assert calls[:4] == [16384, 32768, 65536, 131072]  # doubling until the first failure
    assert len(calls) <= 4 + 6  # then a bisection of the 64K gap at 4K resolution
    assert bench.find_longest(lambda n: False, 16384, 4096, 1 << 20) == 0
    assert bench.find_longest(lambda n: True, 16384, 4096, 65536) == 65536  # stops at the cap


def test_table_is_markdown(bench):
    text = bench.table(["a", "b"], [[1, "x"], [2, "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only exit")
def test_without_cuda_exits_with_a_clear_message(bench, capsys):
    assert bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_unknown_variant_is_rejected(bench, capsys):
    assert bench.main(["--dry-run", "--variants", "turbo"]) == 2
    assert "unknown model/variant ['turbo']" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_prints_both_tables(bench, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bench.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "### RoPE (1, 16, 4/2 heads, 32), float32" in out
    assert "| transformers+peft |" in out and "| longqa all |" in out
    assert "OOM" not in out
