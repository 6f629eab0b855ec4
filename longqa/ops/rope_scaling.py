"""RoPE scaling methods (pure torch). CONTRACT STUB — to be implemented.

``available_methods()`` lists registry names; ``compute_rope(method, ...)`` returns
``(inv_freq[head_dim//2] float32, attention_factor float)``.
"""

from __future__ import annotations

METHODS = ["none", "linear", "ntk", "dynamic-ntk", "yarn", "dynamic-yarn", "llama3", "abf"]


def available_methods() -> list[str]:
    return list(METHODS)
