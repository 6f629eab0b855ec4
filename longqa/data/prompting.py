"""Encode a prompt for generation the way the model saw prompts in training: one BOS, always.

Usage::

    from longqa.data.prompting import prompt_ids, encode_for_generation, chat_text
    ids = prompt_ids(tokenizer, "What is the pass key?", system="Be brief.")  # template + ids
    ids = encode_for_generation(tokenizer, rendered_text)  # text already rendered

Two ways a prompt can end up with the wrong number of BOS tokens:

* chat templates that write the BOS into the rendered text (Llama-2 ``<s>[INST]``, Llama-3
  ``<|begin_of_text|>``) get a second one when the text is then encoded with
  ``add_special_tokens=True``;
* plain text (a base model without a chat template) encoded with ``add_special_tokens=False`` gets
  none, while evaluation scripts such as LongBench's ``pred.py`` call ``tokenizer(prompt)`` and get
  the tokenizer's BOS.

:func:`encode_for_generation` encodes the text without special tokens, then puts the tokenizer's own
leading special tokens (what ``tokenizer(text)`` adds in front: ``<s>``, ``<|begin_of_text|>``, or
nothing for ChatML/Qwen tokenizers) in front unless the text already starts with them, and collapses a
doubled BOS. Every evaluation prompt (passkey, needle, passage retrieval) goes through it.
"""

from __future__ import annotations

from typing import Any


def special_prefix(tokenizer: Any) -> list[int]:
    """Token ids ``tokenizer(text)`` puts before the text's own tokens (``[]`` when none)."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    if plain and len(full) >= len(plain) and full[len(full) - len(plain) :] == plain:
        return full[: len(full) - len(plain)]
    if plain and full[: len(plain)] == plain:
        return []  # only trailing specials (e.g. an EOS), nothing in front
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None and full[:1] == [bos] else []


def encode_for_generation(tokenizer: Any, text: str) -> list[int]:
    """Ids of a rendered prompt with the tokenizer's leading special tokens exactly once."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = special_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids = prefix + ids
    bos = getattr(tokenizer, "bos_token_id", None)
    while bos is not None and ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids


def chat_text(tokenizer: Any, user: str, system: str | None = None) -> str:
    """``user`` (and ``system``) rendered by the tokenizer's chat template, ready for generation;
    plain text (``system``, a blank line, ``user``) when the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return user if system is None else f"{system}\n\n{user}"
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer: Any, user: str, system: str | None = None) -> list[int]:
    """:func:`chat_text` encoded by :func:`encode_for_generation`."""
    return encode_for_generation(tokenizer, chat_text(tokenizer, user, system))
