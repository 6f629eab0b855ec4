"""QLoRA training: ``run_training(recipe, …)`` in :mod:`longqa.train.trainer`.

Modules: ``phases`` (``--data`` applied to a recipe, each phase's dataset), ``data`` (mix and
tokenize records, assistant-only labels; reading and formats are in ``longqa.data``), ``packing`` (packed rows and
padded batches), ``model`` (4-bit base + RoPE + LoRA),
``metrics`` (JSONL + console logs), ``trainer`` (phases, resume). The loss is
:func:`longqa.ops.causal_lm.causal_lm_loss`, shared with perplexity and the benchmarks.
"""
