"""A real llama.cpp server for integration tests; it lives in :mod:`longqa.testing.llama_server` (the benchmarks use it too)."""

from longqa.testing.llama_server import LlamaCppServer, free_port, smollm2_f16_gguf

__all__ = ["smollm2_f16_gguf", "free_port", "LlamaCppServer"]
