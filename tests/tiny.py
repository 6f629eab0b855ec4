"""The tiny random model the fast tests use; it lives in :mod:`longqa.testing.tiny` (the benchmarks
use it too)."""

from longqa.testing.tiny import TINY_SHAPE, tiny_llama_config, with_lora

__all__ = ["TINY_SHAPE", "tiny_llama_config", "with_lora"]
