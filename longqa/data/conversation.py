"""The one conversation encoder: rendered text, token ids, offsets and assistant token positions.

Usage::

    from longqa.data.conversation import encode_conversation, ensure_chat_template, assistant_labels
    ensure_chat_template(tokenizer)                      # ChatML for template-less tokenizers
    enc = encode_conversation(tokenizer, messages)       # text, input_ids, offsets, spans, positions
    labels = assistant_labels(enc)                       # ids on assistant tokens, -100 elsewhere

Training labels, effective-token analysis and attention inputs all read the same positions. Each
assistant turn's span is found by rendering the conversation prefix with the tokenizer's chat
template (``add_generation_prompt=True``) and the conversation up to and including that turn; tokens
whose characters start inside such a span are assistant tokens. Token 0 never is (the causal shift
has nothing to predict it from), so packed examples never predict the next example's first token.
An assistant message with ``"weight": 0`` (OpenAI fine-tuning files) keeps its span but gets no
positions: it is context, not a target. Tool calls, tool results and tool definitions are written
by :func:`longqa.data.tool_calls.template_messages` (the template's own convention, or Hermes-style
turns); an assistant turn's calls are part of its trained span, tool results never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.tool_calls import template_messages

IGNORE_INDEX = -100

# ChatML, used when a tokenizer ships without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> str | None:
    """Give a template-less tokenizer ChatML; returns a notice when it did so."""
    if getattr(tokenizer, "chat_template", None):
        return None
    tokenizer.chat_template = CHATML_TEMPLATE
    return "tokenizer has no chat template: using ChatML"


def _apply(tokenizer: Any, messages: list[dict[str, Any]], gen: bool, kw: dict[str, Any]) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen, **kw
        )
    except Exception as exc:  # jinja2 TemplateError, or a template's own raise_exception(...)
        raise LongqaError(f"the chat template cannot render this conversation ({exc})") from None


def render_conversation(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    gen_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The conversation as the chat template writes it (roles, contents and tool calls)."""
    prepared, kw = template_messages(tokenizer, messages, tools)
    return _apply(tokenizer, prepared, gen_prompt, kw)


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[tuple]]:
    """Render a conversation; return ``(text, [(start, end), …])`` character spans of assistant
    replies (each including the template's end-of-turn marker)."""
    messages, kw = template_messages(tokenizer, messages, tools)
    text = _apply(tokenizer, messages, False, kw)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _apply(tokenizer, messages[:i], True, kw) if i else ""
        upto = _apply(tokenizer, messages[: i + 1], False, kw)
        if text.startswith(upto) and upto.startswith(prefix) and len(prefix) >= cursor:
            start, end = len(prefix), len(upto)
        else:  # template renders history differently: fall back to locating the reply text
            start = text.find(m["content"], cursor) if m["content"] else -1
            if start < 0:
                raise LongqaError("chat template drops an assistant reply; cannot place labels")
            end = start + len(m["content"])
            eos = getattr(tokenizer, "eos_token", None)
            if eos and text.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        cursor = end
    return text, spans


@dataclass
class EncodedConversation:
    """A rendered, tokenized conversation and where its assistant tokens are."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in ``text``
    spans: list[tuple[int, int]]  # character spans of the assistant replies
    positions: list[int]  # token indices inside a trained assistant reply (never index 0)
    turns: list[int]  # for each position, the index of its assistant reply


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> EncodedConversation:
    """Render with the chat template, tokenize, and locate every assistant token."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    trained = [m.get("weight", 1) != 0 for m in messages if m["role"] == "assistant"]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    positions, turns = [], []
    j = 0
    for k, (s, _e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if k > 0 and j < len(spans) and spans[j][0] <= s < spans[j][1] and trained[j]:
            positions.append(k)
            turns.append(j)
    return EncodedConversation(text, ids, offsets, spans, positions, turns)


def assistant_labels(enc: EncodedConversation) -> list[int]:
    """Causal-LM labels: the token id at assistant positions, ``IGNORE_INDEX`` everywhere else."""
    labels = [IGNORE_INDEX] * len(enc.input_ids)
    for k in enc.positions:
        labels[k] = enc.input_ids[k]
    return labels
