"""Long-context evaluations: passkey, needle in a haystack, LongBench passage retrieval, perplexity.

All tasks share :mod:`longqa.eval.runner` (loading through :func:`longqa.models.load.load`, greedy
generation with KV prefix reuse, resumable ``results.jsonl`` / ``summary.json``). The CLI is ``longqa eval …``.
"""
