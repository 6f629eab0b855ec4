"""A stub OpenAI chat-completions server for tests; it lives in :mod:`longqa.testing.openai_stub` (the benchmarks use it too)."""

from longqa.testing.openai_stub import QAResponder, StubOpenAIServer, StubReply

__all__ = ["StubReply", "StubOpenAIServer", "QAResponder"]
