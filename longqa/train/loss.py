"""Causal-LM loss from hidden states, without full-vocabulary logits for long sequences.

Usage::

    from longqa.train.loss import causal_lm_loss
    loss_sum, n_tokens = causal_lm_loss(peft_model, batch, chunk_size=4096, chunked=True)

The decoder runs once and returns the final hidden states ``[B, T, H]``; the LM head and the
cross-entropy are then applied chunk by chunk through
:func:`longqa.ops.fused_ce.chunked_linear_cross_entropy` (recomputed in backward), so a
``T × vocab`` logits tensor never exists. ``chunked=False`` is the plain reference path
(``lm_head`` on every position, then ``F.cross_entropy``), kept for comparison and benchmarks.

The returned value is the *sum* of per-token losses over label tokens and their count, so callers
can form a token-weighted mean over a whole gradient-accumulation step.
"""

from __future__ import annotations

from typing import Any

from longqa.train.data import IGNORE_INDEX


def unwrap_causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` under peft/accelerate wrappers."""
    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "module") and not hasattr(m, "lm_head"):
            m = m.module
        else:
            break
    return m


def shift_labels(labels: Any) -> Any:
    """``labels[:, 1:]`` padded with ``-100`` at the end: target of position t is token t+1."""
    import torch.nn.functional as F

    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def final_hidden_states(model: Any, batch: dict[str, Any]) -> Any:
    """Run the model (LoRA layers included) and return the decoder's last hidden states.

    The call goes through ``model`` itself, wrappers included, so that DDP/FSDP/DeepSpeed see
    their forward (DDP synchronises gradients only for a forward it ran). Only the final hidden
    state is kept (``output_hidden_states=-1``, tied to the normed ``last_hidden_state``) and the
    LM head runs on one position (``logits_to_keep=1``): the loss applies the head in chunks.
    """
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**kwargs, use_cache=False, output_hidden_states=-1, logits_to_keep=1)
    return out.hidden_states[-1]


def causal_lm_loss(
    model: Any, batch: dict[str, Any], *, chunk_size: int = 4096, chunked: bool = True
) -> tuple[Any, Any]:
    """Return ``(sum of token losses, number of label tokens)`` for a batch with ``labels``."""
    import torch.nn.functional as F

    lm = unwrap_causal_lm(model)
    hidden = final_hidden_states(model, batch)  # [B, T, H]
    head = lm.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)  # [V, H], [V] | None
    # pre-shifted targets come from a sequence-parallel shard (its last token's target is the
    # next shard's first token); otherwise shift here
    shifted = batch["shift_labels"] if "shift_labels" in batch else shift_labels(batch["labels"])
    targets = shifted.reshape(-1)  # [B*T]
    n_tokens = (targets != IGNORE_INDEX).sum()
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [B*T, H]
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    if n_tokens.item() == 0:
        return hidden.sum() * 0.0, n_tokens
    if chunked:
        from longqa.ops.fused_ce import chunked_linear_cross_entropy

        mean = chunked_linear_cross_entropy(
            hidden, weight, targets, chunk_size=chunk_size, ignore_index=IGNORE_INDEX, bias=bias
        )
        return mean * n_tokens.to(mean.dtype), n_tokens
    logits = F.linear(hidden, weight, bias).float()  # [B*T, V]
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, n_tokens
