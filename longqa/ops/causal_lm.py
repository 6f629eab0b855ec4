"""The one causal-LM loss from final hidden states: training, perplexity and the benchmarks run it.

Usage::

    from longqa.ops.causal_lm import causal_lm_loss, unwrap_causal_lm
    loss_sum, n_tokens = causal_lm_loss(peft_model, batch, chunk_size=4096, chunked=True)
    loss = loss_sum / n_tokens                      # token mean, as transformers' own loss

``chunk_size=0`` picks the chunk from memory (:func:`loss_chunk_from_memory`). ``batch`` holds
``input_ids`` and ``labels`` (``-100`` where a token is not scored), optionally
``attention_mask`` / ``position_ids``. The decoder runs once and returns the final hidden states
``[B, T, H]``; position ``t`` predicts label ``t + 1``. Only positions whose target is scored go on
to the LM head. With ``chunked=True`` the head and the cross-entropy run block by block through
:func:`longqa.ops.chunked_ce.chunked_linear_cross_entropy` (recomputed in backward), so a
``T × vocab`` logits tensor never exists; ``chunked=False`` applies the head module to those
positions and then ``F.cross_entropy`` (the reference; also the path for a head that is not a plain
``nn.Linear``). The recipe switch ``kernels.chunked_ce`` picks one for training.

The value returned is the *sum* of per-token losses and the number of scored tokens, so callers form
a token-weighted mean over a whole gradient-accumulation step (or a whole perplexity window).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from longqa.core.errors import LongqaError

IGNORE_INDEX = -100  # PyTorch's and transformers' label value for "not scored"
LOSS_BLOCK_BYTES = 2**30  # logits + their gradient of one loss chunk, fp32, when chosen from memory


def loss_chunk_from_memory(vocab: int, budget_bytes: float = LOSS_BLOCK_BYTES) -> int:
    """Tokens per loss chunk so that two fp32 ``[chunk, vocab]`` blocks fit in ``budget_bytes``.

    A multiple of 256 tokens, at least 256 (e.g. 1024 for Llama-3's 128,256-token vocabulary).
    """
    return max(256, int(budget_bytes // (2 * 4 * vocab)) // 256 * 256)


def unwrap_causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` under peft (``get_base_model``) / accelerate (``module``) wrappers."""
    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "module") and not hasattr(m, "lm_head"):
            m = m.module
        else:
            break
    return m


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``labels[:, 1:]`` padded with ``ignore_index`` at the end: target of position t is token t+1."""
    return F.pad(labels[:, 1:], (0, 1), value=ignore_index)


def final_hidden_states(model: Any, batch: Mapping[str, Any]) -> Tensor:
    """Run the model (LoRA layers included) and return the decoder's last hidden states ``[B, T, H]``.

    The call goes through ``model`` itself, wrappers included, so that DDP/FSDP/DeepSpeed see their
    forward (DDP all-reduces gradients only for a forward it ran). Only the final hidden state is
    kept (``output_hidden_states=-1``, tied to the normed ``last_hidden_state``) and the LM head runs
    on one position (``logits_to_keep=1``): the loss applies the head itself, in chunks.
    """
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**kwargs, use_cache=False, output_hidden_states=-1, logits_to_keep=1)
    return out.hidden_states[-1]


def _own_class(module: nn.Module) -> type:
    """The module's class, seen through the ``FSDP<Class>`` subclass that FSDP2's ``fully_shard``
    gives a module it shards (``FSDPLinear`` is still a plain ``nn.Linear`` head)."""
    cls = type(module)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return cls
    if isinstance(module, FSDPModule):
        cls = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def _plain_head(lm: Any) -> nn.Linear:
    head = lm.get_output_embeddings()
    if getattr(lm.config, "final_logit_softcapping", None):
        raise LongqaError("chunked cross-entropy: logit soft-capping models are not supported")
    if _own_class(head) is not nn.Linear or not head.weight.is_floating_point():
        raise LongqaError(
            f"chunked cross-entropy: the LM head is a {_own_class(head).__name__} (quantized or adapted); "
            "it needs a plain floating-point nn.Linear head (set kernels.chunked_ce: false)"
        )
    return head


def causal_lm_loss(
    model: Any,
    batch: Mapping[str, Any],
    *,
    chunk_size: int = 4096,
    chunked: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Return ``(sum of token losses, number of scored tokens)`` for a batch with ``labels``."""
    from longqa.ops.chunked_ce import chunked_linear_cross_entropy

    lm = unwrap_causal_lm(model)
    hidden = final_hidden_states(model, batch)  # [B, T, H]
    # pre-shifted targets come from a sequence-parallel shard (its last token's target is the next
    # shard's first token); otherwise shift here
    if "shift_labels" in batch:
        shifted = batch["shift_labels"].to(hidden.device)
    else:
        shifted = shift_labels(batch["labels"].to(hidden.device), ignore_index)
    targets = shifted.reshape(-1)  # [B*T]
    scored = targets != ignore_index
    n_tokens = scored.sum()
    hidden = hidden.reshape(-1, hidden.shape[-1])[scored]  # [N, H], N scored positions
    targets = targets[scored]  # [N]
    # a rank may hold no scored token (a sequence-parallel piece of prompt only); under ZeRO-3 it
    # still takes part in the head's gathers, or the ranks' collectives stop matching
    empty = hidden.shape[0] == 0
    if empty and not _zero3_partitioned(lm.get_output_embeddings()):
        return hidden.sum() * 0.0, n_tokens
    if not chunked:
        logits = lm.get_output_embeddings()(hidden).float()  # [N, V]
        return F.cross_entropy(logits, targets, reduction="sum"), n_tokens
    head = _plain_head(lm)
    if _zero3_partitioned(head) and head.weight.requires_grad:
        # a trained head would need its gradient partitioned too: let DeepSpeed run the module
        logits = head(hidden).float()  # [N, V]
        return F.cross_entropy(logits, targets, reduction="sum"), n_tokens
    with _whole_params(head):
        if empty:
            return hidden.sum() * 0.0, n_tokens
        weight, bias = head.weight, head.bias  # [V, H], [V] | None
        if chunk_size <= 0:  # train.loss_chunk_size: 0 -> chunk chosen from memory
            chunk_size = loss_chunk_from_memory(weight.shape[0])
        if hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        # the gradients are computed in this forward and stored; backward needs no weight
        total = chunked_linear_cross_entropy(
            hidden, weight, targets, chunk_size=chunk_size, bias=bias, reduction="sum"
        )
    return total, n_tokens


def _zero3_partitioned(module: nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 has partitioned ``module``'s weight (a rank holds a slice; the
    whole tensor exists only while the module runs its own forward)."""
    return hasattr(module.weight, "ds_id")


def _whole_params(module: nn.Module) -> Any:
    """Context in which ``module``'s parameters are whole: ZeRO-3 gathers them (read-only, every
    rank takes part), anything else already is (FSDP2 keeps the head unsharded after forward)."""
    if not _zero3_partitioned(module):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)))
