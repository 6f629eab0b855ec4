"""QLoRA training: ``run_training(recipe, …)`` in :mod:`longqa.train.trainer`.

Modules: ``data`` (read + tokenize datasets, assistant-only labels), ``packing`` (packed rows and
padded batches), ``model`` (4-bit base + RoPE + LoRA), ``metrics`` (JSONL + console logs),
``plan`` (GPU memory planner), ``trainer`` (phases, resume). The loss is
:func:`longqa.ops.causal_lm.causal_lm_loss`, shared with perplexity and the benchmarks.
"""
