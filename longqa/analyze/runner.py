"""Run the analyses over datasets of our sample schema and write JSON + PNG reports.

    from longqa.analyze.runner import analyze_effective_tokens, analyze_attention
    report = analyze_effective_tokens({"paraphrase": "data/a", "plain": "data/b"},
                                      model="smollm2-135m", out="runs/eff")
    prof = analyze_attention("data/a", model="smollm2-135m", out="runs/attn", sample_index=0)

Samples say where their relevant documents are through ``meta.relevant`` (written by the
paraphrase-mdqa builder): one entry per assistant turn with ``doc_span`` — the ``[start, end)``
character range of the relevant document inside the first user message — ``quote`` (the verbatim
original text quoted by the answer) and ``negative`` (a turn about a removed document).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longqa.analyze.attention import AttentionProfile, attention_profile
from longqa.analyze.effective import EffectiveResult, ablate, effective_tokens
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json
from longqa.data.schema import Sample, read_samples


def relevant_targets(sample: Sample) -> tuple[list[str], list[str | None]]:
    """(relevant document texts, per-assistant-turn quotes) of a sample, from ``meta.relevant``."""
    entries = sample.meta.get("relevant")
    messages = [m.model_dump() for m in sample.messages or []]
    first_user = next((m["content"] for m in messages if m["role"] == "user"), None)
    if not isinstance(entries, list) or first_user is None:
        raise LongqaError(
            f"sample {sample.id}: meta.relevant is missing; effective-token analysis needs samples "
            "built by `longqa build-data --task paraphrase-mdqa`"
        )
    docs: list[str] = []
    quotes: list[str | None] = []
    for k, e in enumerate(entries):
        quotes.append(e.get("quote") or None)
        span = e.get("doc_span")
        if e.get("negative") or not span:
            continue
        if not (isinstance(span, list) and len(span) == 2):
            raise LongqaError(
                f"sample {sample.id}: meta.relevant[{k}].doc_span must be [start, end]"
            )
        text = first_user[span[0] : span[1]]
        if text and text not in docs:
            docs.append(text)
    if not docs:
        raise LongqaError(f"sample {sample.id}: no relevant document spans in meta.relevant")
    return docs, quotes


def _load(model: str, adapter: str | None, rope: Any, attn: str | None = None):
    from longqa.models.load import load

    m, tok, _spec = load(model, adapter=adapter, rope=rope, attn_implementation=attn or "auto")
    return m, tok


def analyze_effective_tokens(
    datasets: dict[str, str],
    *,
    model: str,
    out: str | Path,
    adapter: str | None = None,
    rope: Any = None,
    threshold: float = 1.0,
    mode: str = "remove",
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Effective-token shares per dataset (and per task within it); writes report.json + PNG."""
    from rich.progress import Progress

    from longqa.analyze.plots import plot_gap_histograms

    m, tok = _load(model, adapter, rope)
    out = Path(out)
    report: dict[str, Any] = {"model": model, "adapter": adapter, "threshold": threshold,
                              "ablation": mode, "datasets": {}}  # fmt: skip
    all_gaps: dict[str, torch.Tensor] = {}
    with Progress() as progress:
        for name, path in datasets.items():
            samples = list(read_samples(path))[:max_samples]
            if not samples:
                raise LongqaError(f"{path}: no samples")
            pool = _distractor_pool(samples) if mode == "distractor" else []
            task_id = progress.add_task(f"{name}", total=len(samples))
            per_sample, results = [], []
            for s in samples:
                docs, quotes = relevant_targets(s)
                msgs = [m_.model_dump() for m_ in s.messages or []]
                distract = [t for t in pool if t not in docs][: len(docs)]
                abl = ablate(msgs, docs, mode=mode, distractors=distract)
                r = effective_tokens(m, tok, msgs, abl, quotes=quotes, threshold=threshold)
                results.append((s, r))
                per_sample.append({"id": s.id, "task": s.task, **r.to_json()})
                progress.advance(task_id)
            gaps = torch.cat([r.gaps for _, r in results])
            all_gaps[name] = gaps
            report["datasets"][name] = {
                "path": str(path),
                "overall": _aggregate([r for _, r in results]),
                "by_task": {
                    t: _aggregate([r for s, r in results if s.task == t])
                    for t in sorted({s.task for s, _ in results})
                },
                "samples": per_sample,
            }
    plot_gap_histograms(all_gaps, threshold, out / "effective_tokens.png")
    atomic_write_json(out / "report.json", report)
    return report


def _aggregate(results: list[EffectiveResult]) -> dict[str, Any]:
    gaps = torch.cat([r.gaps for r in results])
    eff = torch.cat([r.effective for r in results])
    quote = torch.cat([r.in_quote for r in results])
    hist, edges = torch.histogram(gaps.clamp(-5, 15).float(), bins=20, range=(-5.0, 15.0))
    return {
        "samples": len(results),
        "tokens": int(gaps.numel()),
        "effective_share": float(eff.float().mean()),
        "quote_tokens": int(quote.sum()),
        "quote_effective_share": float(eff[quote].float().mean()) if quote.any() else None,
        "answer_effective_share": float(eff[~quote].float().mean()) if (~quote).any() else None,
        "effective_in_quote": float((eff & quote).sum() / eff.sum()) if eff.any() else None,
        "gap_histogram": {"counts": hist.long().tolist(), "edges": edges.tolist()},
    }


def _distractor_pool(samples: list[Sample]) -> list[str]:
    """Relevant documents of other samples, used as same-length replacements."""
    pool: list[str] = []
    for s in samples:
        try:
            pool.extend(relevant_targets(s)[0])
        except LongqaError:
            continue
    return pool[::-1]


def conversation_for_attention(sample: Sample, turn: int = 0) -> tuple[list[dict], int]:
    """Messages up to and including assistant turn ``turn``, and that turn's meta.relevant index."""
    msgs = [m.model_dump() for m in sample.messages or []]
    seen = -1
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            seen += 1
            if seen == turn:
                return msgs[: i + 1], seen
    raise LongqaError(f"sample {sample.id} has no assistant turn {turn}")


def attention_inputs(tokenizer, sample: Sample, turn: int = 0):
    """(input_ids [1, T], answer token positions, context_end, relevant span in tokens or None)."""
    from longqa.data.conversation import encode_conversation, ensure_chat_template

    ensure_chat_template(tokenizer)
    msgs, k = conversation_for_attention(sample, turn)
    enc = encode_conversation(tokenizer, msgs)
    text, ids, offsets = enc.text, enc.input_ids, enc.offsets
    last = len(enc.spans) - 1
    answer = [p for p, t in zip(enc.positions, enc.turns, strict=True) if t == last]
    context_end = answer[0]
    span_tok = None
    entry = (sample.meta.get("relevant") or [{}])[k] if sample.meta.get("relevant") else {}
    if entry.get("doc_span") and not entry.get("negative"):
        first_user = next(m["content"] for m in msgs if m["role"] == "user")
        base = text.find(first_user)
        c0, c1 = base + entry["doc_span"][0], base + entry["doc_span"][1]
        toks = [i for i, (s, _e) in enumerate(offsets) if c0 <= s < c1]
        if toks:
            span_tok = (toks[0], toks[-1] + 1)
    return torch.tensor([ids]), answer, context_end, span_tok


def analyze_attention(
    data: str,
    *,
    model: str,
    out: str | Path,
    adapter: str | None = None,
    rope: Any = None,
    sample_index: int = 0,
    turn: int = 0,
    bins: int = 50,
    per_layer: bool = False,
    compare_base: bool = False,
) -> dict[str, AttentionProfile]:
    """Attention profile of one sample's answer; with ``compare_base`` also the base model's."""
    from longqa.analyze.plots import plot_attention_profiles, plot_layer_heatmap

    samples = list(read_samples(data))
    if not 0 <= sample_index < len(samples):
        raise LongqaError(
            f"{data}: sample index {sample_index} out of range (0..{len(samples) - 1})"
        )
    sample = samples[sample_index]
    runs = {"adapter" if adapter else "model": adapter}
    if adapter and compare_base:
        runs = {"base": None, **runs}
    profiles: dict[str, AttentionProfile] = {}
    for name, ad in runs.items():
        m, tok = _load(model, ad, rope, attn="eager")
        ids, answer, ctx_end, span = attention_inputs(tok, sample, turn)
        profiles[name] = attention_profile(m, ids, answer, ctx_end, bins=bins, span=span)
        del m
    out = Path(out)
    plot_attention_profiles(profiles, out / "attention.png", title=f"sample {sample.id}")
    if per_layer:
        for name, prof in profiles.items():
            plot_layer_heatmap(prof, out / f"attention_layers_{name}.png")
    atomic_write_json(
        out / "attention.json",
        {"sample": sample.id, "turn": turn, **{k: p.to_json() for k, p in profiles.items()}},
    )
    return profiles


def passkey_attention(
    model: Any,
    tokenizer: Any,
    *,
    length: int,
    depth: float,
    passkey: int = 68217,
    bins: int = 50,
    max_new_tokens: int = 6,
) -> tuple[AttentionProfile, str]:
    """Attention profile of the model's greedy answer to one passkey prompt, with the key sentence
    as the marked span. Returns ``(profile, generated text)``. The model must use eager attention."""
    from longqa.eval.passkey import key_sentence_ids, passkey_ids

    ids = passkey_ids(tokenizer, passkey, length, depth)
    info = key_sentence_ids(tokenizer, passkey)
    start = next(
        (i for i in range(len(ids) - len(info) + 1) if ids[i : i + len(info)] == info), None
    )
    if start is None:
        raise LongqaError("passkey sentence not found in the prompt tokens")
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
    full = gen[:, : len(ids) + max_new_tokens].cpu()
    answer = list(range(len(ids), full.shape[1]))
    prof = attention_profile(
        model, full, answer, context_end=len(ids), bins=bins, span=(start, start + len(info))
    )
    return prof, tokenizer.decode(full[0, len(ids) :], skip_special_tokens=True)
