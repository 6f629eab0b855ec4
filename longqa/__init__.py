"""longqa: turn a short-context open LLM into an accurate long-context one on a single GPU.

Library entry points (the CLI in ``longqa.cli`` is a thin layer over these):

- ``longqa.config.recipe.load_recipe`` — typed recipes from ``recipes/*.yaml`` with dotted overrides.
- ``longqa.ops.rope_scaling`` — pure-torch RoPE scaling methods (a registry).
- ``longqa.patch.rope.apply_rope_scaling`` / ``revert_rope_scaling`` — patch HF Llama/Qwen2 models.
- ``longqa.models.loading.load_model`` / ``load_tokenizer`` — local folders, hub ids, GGUF files, aliases.
"""

__version__ = "0.1.0"
