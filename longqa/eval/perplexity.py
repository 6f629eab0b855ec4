"""Perplexity of long documents at several context lengths (sliding window with stride).

For each context length ``L`` the token stream of the documents is scored with windows of ``L``
tokens moved by ``stride``; each window scores only its tokens not scored by the previous window,
so every token is predicted with up to ``L`` tokens of context — the procedure of the HF guide
"Perplexity of fixed-length models" (https://huggingface.co/docs/transformers/perplexity). A model
whose RoPE extension works keeps perplexity flat (or falling) past its native window; an
unextended one blows up there.

The loss is training's (:func:`longqa.ops.causal_lm.causal_lm_loss`, chunked cross-entropy), so a
32K window never materialises 32K × vocab logits.

Usage::

    from longqa.eval.perplexity import run_perplexity
    run_perplexity(model, tok, spec, data="docs/", lengths=[2048, 8192, 16384], out_dir="runs/ppl")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.paths import iter_jsonl


def load_documents(path: str | Path) -> list[str]:
    """Texts from a ``.txt``/``.md`` file, a folder of them, or JSONL with a ``text`` field."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise LongqaError(f"perplexity data not found: {path}")
    docs: list[str] = []
    for f in files:
        if f.suffix == ".jsonl":
            for lineno, row in iter_jsonl(f):
                if not isinstance(row.get("text"), str):
                    raise LongqaError(f"{f}:{lineno}: field 'text' missing (a string)")
                docs.append(row["text"])
        else:
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                docs.append(text)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise LongqaError(f"{path}: no text found (expected .txt/.md files or JSONL with 'text')")
    return docs


def token_stream(tokenizer: Any, docs: list[str], max_tokens: int) -> list[int]:
    """Documents tokenised and joined by EOS, cut to ``max_tokens``."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def window_nll(model: Any, ids: list[int], n_target: int) -> float:
    """Summed negative log-likelihood of the last ``n_target`` tokens of ``ids`` (one forward)."""
    import torch

    from longqa.ops.causal_lm import IGNORE_INDEX, causal_lm_loss

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    labels = x.clone()
    labels[:, : len(ids) - n_target] = IGNORE_INDEX  # score only the last n_target tokens
    with torch.inference_mode():
        total, _ = causal_lm_loss(model, {"input_ids": x, "labels": labels}, chunk_size=1024)
    return float(total)


def sliding_windows(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, n_target)`` windows: each scores the tokens after the previous one's end."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        # the first token of a window has no context inside it, so at most end - begin - 1
        n_target = min(end - prev_end, end - begin - 1)
        if n_target > 0:
            out.append((begin, end, n_target))
        prev_end = end
        if end == n_tokens:
            break
    return out


def run_perplexity(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    data: str | Path,
    lengths: list[int],
    out_dir: str | Path,
    stride: int | None = None,
    max_tokens: int | None = None,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Perplexity at each length (resumable per length); writes a perplexity-vs-length PNG."""
    from longqa.eval.plots import plot_by_length
    from longqa.eval.runner import ResultStore, progress_bar, spec_label

    docs = load_documents(data)
    budget = max_tokens or 2 * max(lengths)
    ids = token_stream(tokenizer, docs, budget)
    if len(ids) < max(lengths):
        raise LongqaError(
            f"{data}: only {len(ids)} tokens of text; --lengths up to {max(lengths)} need at least "
            f"that many"
        )
    config = {
        "task": "perplexity",
        "model": model_name,
        "rope": spec.model_dump() if spec else None,
        "data": str(data),
        "lengths": lengths,
        "stride": stride,
        "tokens": len(ids),
    }
    out = Path(out_dir)
    store = ResultStore(out, config, overwrite=overwrite)
    plans = {L: sliding_windows(len(ids), L, stride or max(1, L // 2)) for L in lengths}
    total = sum(len(p) for L, p in plans.items() if not store.done(f"L{L}"))
    progress, task = progress_bar(total, f"perplexity [{spec_label(spec)}]")
    from contextlib import nullcontext

    with progress if show_progress else nullcontext():
        for L, windows in plans.items():
            if store.done(f"L{L}"):
                continue
            nll, count = 0.0, 0
            for begin, end, n_target in windows:
                nll += window_nll(model, ids[begin:end], n_target)
                count += n_target
                progress.advance(task)
            ppl = math.exp(nll / count)
            store.append(
                {
                    "key": f"L{L}",
                    "length": L,
                    "nll": nll / count,
                    "perplexity": ppl,
                    "tokens": count,
                }
            )
    rows = sorted((r for r in store.rows if r["length"] in lengths), key=lambda r: r["length"])
    by_length = {str(r["length"]): r["perplexity"] for r in rows}
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    summary = {
        "task": "perplexity",
        "metric": "perplexity",
        "perplexity": rows[-1]["perplexity"] if rows else None,
        "by_length": by_length,
        "tokens": len(ids),
        "model": model_name,
        "rope": spec_label(spec),
    }
    store.write_summary(summary)
    plot_by_length(
        by_length, out / "perplexity_by_length.png", "perplexity", logy=True, window=window
    )
    return summary
