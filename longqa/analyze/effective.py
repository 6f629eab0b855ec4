"""Effective tokens: which answer tokens can only be predicted by attending to the relevant document?

    from longqa.analyze.effective import effective_tokens
    res = effective_tokens(model, tokenizer, messages, ablated_messages, quotes=[...], threshold=1.0)
    res.share, res.quote_share, res.answer_share

The paraphrasing paper (Yu, "Training With 'Paraphrasing the Original Text' Improves Long-Context
Performance", arXiv:2312.11193) calls a training token *effective* when predicting it needs the
distant relevant span. We measure that directly: for every assistant token, the log-probability with
the full context minus the log-probability when the relevant document(s) are removed from the prompt
(or replaced by a same-length distractor). A token is effective when that gap exceeds ``threshold``
nats (default 1.0: the full context makes it ``e`` ≈ 2.7× more likely).

Only the user turns differ between the two renderings, so the assistant tokens are the same sequence
in both; this is checked, not assumed. Logits are computed only at the assistant positions
(``logits_to_keep``), so the vocabulary-sized logits of the whole prompt never exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longqa.data.conversation import IGNORE_INDEX, encode_conversation, ensure_chat_template


@dataclass
class EffectiveResult:
    """Per-token log-probability gaps for one conversation."""

    gaps: torch.Tensor  # [A] logp(full) - logp(ablated), nats, one per assistant token
    in_quote: torch.Tensor  # [A] bool — token lies inside a quoted original-text span
    turn: torch.Tensor  # [A] long — index of the assistant turn the token belongs to
    threshold: float

    @property
    def effective(self) -> torch.Tensor:
        return self.gaps > self.threshold

    @property
    def share(self) -> float:
        """Fraction of assistant tokens that are effective."""
        return float(self.effective.float().mean()) if self.gaps.numel() else 0.0

    def _share_where(self, mask: torch.Tensor) -> float | None:
        return float(self.effective[mask].float().mean()) if bool(mask.any()) else None

    @property
    def quote_share(self) -> float | None:
        """Effective fraction among quote tokens (None when there is no quote)."""
        return self._share_where(self.in_quote)

    @property
    def answer_share(self) -> float | None:
        """Effective fraction among the remaining (non-quote) assistant tokens."""
        return self._share_where(~self.in_quote)

    def to_json(self) -> dict[str, object]:
        eff = self.effective
        return {
            "tokens": int(self.gaps.numel()),
            "effective": int(eff.sum()),
            "share": self.share,
            "quote_tokens": int(self.in_quote.sum()),
            "quote_effective": int((eff & self.in_quote).sum()),
            "quote_share": self.quote_share,
            "answer_share": self.answer_share,
            "mean_gap": float(self.gaps.mean()) if self.gaps.numel() else 0.0,
        }


@torch.no_grad()
def token_logprobs(model, input_ids: list[int], positions: Sequence[int]) -> torch.Tensor:
    """log p(input_ids[p] | input_ids[:p]) for each p in ``positions`` → [len(positions)] float32."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    pos = torch.tensor(positions, device=device)
    out = model(input_ids=ids, logits_to_keep=pos - 1, use_cache=False)
    logits = out.logits[0].float()  # [len(positions), vocab] — logits at p-1 predict token p
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(1, ids[0, pos].unsqueeze(1)).squeeze(1).cpu()


def effective_tokens(
    model,
    tokenizer,
    messages: list[dict[str, str]],
    ablated_messages: list[dict[str, str]],
    *,
    quotes: Sequence[str | None] | None = None,
    threshold: float = 1.0,
) -> EffectiveResult:
    """Log-probability gap of every assistant token between ``messages`` and ``ablated_messages``.

    ``quotes[i]`` is the original-text quote of assistant turn ``i`` (None for none); tokens inside
    it are flagged ``in_quote`` so the split between quote and answer can be reported.
    """
    ensure_chat_template(tokenizer)
    full = encode_conversation(tokenizer, messages)
    abl = encode_conversation(tokenizer, ablated_messages)
    text, offsets, pos = full.text, full.offsets, full.positions
    if [full.input_ids[p] for p in pos] != [abl.input_ids[p] for p in abl.positions]:
        raise ValueError("assistant tokens differ between the full and ablated conversations")
    if not pos:
        raise ValueError("conversation has no assistant tokens")
    gaps = token_logprobs(model, full.input_ids, pos) - token_logprobs(
        model, abl.input_ids, abl.positions
    )

    quote_ranges: list[tuple[int, int]] = []
    assistant_turns = [m for m in messages if m["role"] == "assistant"]
    for i, (start, _end) in enumerate(full.spans):
        quote = quotes[i] if quotes is not None and i < len(quotes) else None
        if not quote:
            continue
        at = text.find(quote, start)
        if at < 0 or (i < len(assistant_turns) and quote not in assistant_turns[i]["content"]):
            continue
        quote_ranges.append((at, at + len(quote)))
    in_quote = torch.tensor(
        [any(a <= offsets[p][0] < b for a, b in quote_ranges) for p in pos], dtype=torch.bool
    )
    return EffectiveResult(
        gaps=gaps,
        in_quote=in_quote,
        turn=torch.tensor(full.turns, dtype=torch.long),
        threshold=threshold,
    )


def ablate(
    messages: list[dict[str, str]],
    relevant: Sequence[str],
    *,
    mode: str = "remove",
    distractors: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Copy of ``messages`` with every ``relevant`` text removed from the user/system turns
    (``mode="remove"``) or replaced by a distractor cut to the same number of characters
    (``mode="distractor"``; ``distractors`` supplies the replacement texts in order)."""
    if mode not in ("remove", "distractor"):
        raise ValueError(f"unknown ablation mode '{mode}' (expected remove or distractor)")
    if mode == "distractor" and len(distractors) < len(relevant):
        raise ValueError("distractor ablation needs one distractor text per relevant document")
    out = []
    found = [False] * len(relevant)
    for m in messages:
        content = m["content"]
        if m["role"] != "assistant":
            for i, doc in enumerate(relevant):
                if doc and doc in content:
                    found[i] = True
                    repl = "" if mode == "remove" else _same_length(distractors[i], len(doc))
                    content = content.replace(doc, repl)
        out.append({"role": m["role"], "content": content})
    missing = [i for i, f in enumerate(found) if not f]
    if missing:
        raise ValueError(f"relevant document(s) {missing} not found verbatim in the prompt")
    return out


def _same_length(text: str, n: int) -> str:
    """``text`` repeated/cut to exactly ``n`` characters, cut back to a word boundary if possible."""
    if not text:
        raise ValueError("empty distractor text")
    while len(text) < n:
        text = text + " " + text
    cut = text[:n]
    space = cut.rfind(" ")
    return cut if space < n * 0.8 else cut[:space].ljust(n)


__all__ = ["EffectiveResult", "IGNORE_INDEX", "ablate", "effective_tokens", "token_logprobs"]
