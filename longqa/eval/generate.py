"""Streaming text generation with a base model (+ adapter, + RoPE spec): ``longqa generate``.

Usage::

    from longqa.eval.generate import generate_text, chat_loop
    from longqa.models.load import load
    model, tok, spec = load("smollm2-135m", adapter="runs/x/adapter")
    generate_text(model, tok, open("long_prompt.txt").read(), spec=spec, stream=sys.stdout)

The RoPE spec comes from the adapter (``rope_spec.json``) unless one is given explicitly
(:func:`longqa.models.load.load`). Prompts are used as they are — never truncated; when prompt + new
tokens exceed what the spec can address (:func:`longqa.patch.rope.addressable_length`) a warning
says so and generation goes ahead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

from longqa.core.errors import LongqaError

log = logging.getLogger(__name__)


def context_warning(model: Any, spec: Any, n_prompt: int, max_new_tokens: int) -> str | None:
    """A warning when prompt + new tokens exceed what the spec (or native RoPE) addresses."""
    from longqa.patch.rope import addressable_length

    limit = addressable_length(model.config, spec)
    total = n_prompt + max_new_tokens
    if limit is None or total <= limit:
        return None
    what = f"the RoPE spec ({spec.method})" if spec is not None else "the model's native RoPE"
    return (
        f"prompt is {n_prompt} tokens (+{max_new_tokens} new = {total}) but {what} addresses "
        f"{limit}; nothing is truncated, expect degraded output beyond {limit} "
        "(train/choose a longer spec, e.g. --rope yarn --rope-factor N)"
    )


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], *, template: bool) -> Any:
    """Token ids ``[1, T]`` for raw text, or for chat messages via the tokenizer's chat template."""
    if isinstance(prompt, list) or template:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if not getattr(tokenizer, "chat_template", None):
            raise LongqaError("this tokenizer has no chat template; use --raw for plain text")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def _streamer(tokenizer: Any, out: TextIO | None) -> Any:
    from transformers import TextStreamer

    class _To(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if out is not None:
                out.write(text + ("\n" if stream_end else ""))
                out.flush()

    return _To(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_text(
    model: Any,
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    *,
    spec: Any = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    template: bool = True,
    stream: TextIO | None = None,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Generate a reply (streamed to ``stream`` as it is produced); returns the new text.

    ``temperature`` 0 is greedy decoding; otherwise sampling with ``top_p``. ``template`` wraps a
    plain prompt as one user turn of the chat template (when the tokenizer has one).
    """
    import torch
    from transformers import set_seed

    if max_new_tokens < 1:
        raise LongqaError(f"--max-new-tokens must be >= 1 (got {max_new_tokens})")
    if temperature < 0 or not 0 < top_p <= 1:
        raise LongqaError("--temperature must be >= 0 and --top-p in (0, 1]")
    use_template = template and bool(getattr(tokenizer, "chat_template", None))
    ids = encode_prompt(tokenizer, prompt, template=use_template).to(model.device)
    message = context_warning(model, spec, ids.shape[1], max_new_tokens)
    if message:
        (warn or log.warning)(message)
    if seed is not None:
        set_seed(seed)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            streamer=_streamer(tokenizer, stream),
            pad_token_id=pad,
            **kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def chat_loop(
    model: Any,
    tokenizer: Any,
    *,
    read: Callable[[], str | None],
    out: TextIO = sys.stdout,
    prompt_out: TextIO | None = None,
    system: str | None = None,
    **gen: Any,
) -> list[dict[str, str]]:
    """REPL with history: each line from ``read`` is a user turn (``None``/``/exit`` ends,
    ``/reset`` clears the history). Returns the conversation."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        if prompt_out is not None:
            prompt_out.write("you> ")
            prompt_out.flush()
        line = read()
        if line is None or line.strip() in ("/exit", "/quit"):
            return history
        if not line.strip():
            continue
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        reply = generate_text(model, tokenizer, list(history), stream=out, **gen)
        history.append({"role": "assistant", "content": reply})
