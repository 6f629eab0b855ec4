"""longqa: turn a short-context open LLM into an accurate long-context one on a single GPU.

Library entry points (the CLI in ``longqa.cli`` is a thin layer over these):

- ``longqa.config.recipe.load_recipe`` — typed recipes from ``recipes/*.yaml`` with dotted overrides.
- ``longqa.ops.rope_scaling`` — pure-torch RoPE scaling methods (a registry).
- ``longqa.patch.rope.apply_rope_scaling`` / ``revert_rope_scaling`` — patch HF Llama/Qwen2 models.
- ``longqa.models.load.load`` — model + tokenizer + RoPE spec from a folder, hub id, GGUF or alias,
  with an optional trained adapter.
- ``longqa.ops.causal_lm.causal_lm_loss`` — the loss training, perplexity and benchmarks share.
"""

__version__ = "0.1.0"

from longqa.core.quiet import quiet_library_notices as _quiet

_quiet()
