"""Load a script of ``benchmarks/`` as a module in a test (they are scripts, not a package).

Usage::

    from bench_modules import bench_fixture, load_bench
    bench = bench_fixture("bench_layer_memory")       # module-scoped fixture named ``bench``
    gpu_longest = load_bench("gpu_longest")           # a module, now
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name`` (its sibling scripts importable)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def bench_fixture(script: str, name: str = "bench") -> Any:
    """A module-scoped fixture ``name`` yielding ``benchmarks/<script>.py``, unloaded after."""

    @pytest.fixture(scope="module", name=name)
    def _fixture() -> Iterator[ModuleType]:
        yield load_bench(script)
        sys.modules.pop(script, None)

    return _fixture
