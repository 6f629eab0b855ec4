"""QLoRA training: ``run_training(recipe, …)`` in :mod:`longqa.train.trainer`.

Modules: ``data`` (read + tokenize datasets, assistant-only labels), ``packing`` (packed rows and
padded batches), ``loss`` (chunked causal-LM loss), ``model`` (4-bit base + RoPE + LoRA),
``metrics`` (JSONL + console logs), ``plan`` (GPU memory planner), ``trainer`` (phases, resume).
"""
