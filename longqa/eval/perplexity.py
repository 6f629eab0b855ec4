"""Perplexity of long documents at several context lengths, under one of two protocols.

``protocol="stream"`` (default): the documents are tokenised, joined by EOS into one stream, and for
each context length ``L`` scored with windows of ``L`` tokens moved by ``stride`` (default ``L/2``);
each window scores only its tokens not scored by the previous window, so every token is predicted
with up to ``L`` tokens of context; perplexity = exp(total NLL / scored tokens), token-weighted —
the procedure of the HF guide "Perplexity of fixed-length models"
(https://huggingface.co/docs/transformers/perplexity).

``protocol="yarn"``: the protocol of YaRN's ``eval/perplexity.py`` (``compute_perplexity``,
https://github.com/jquesnelle/yarn), which produced the proof-pile / GovReport tables of YaRN
(arXiv:2309.00071) and of Position Interpolation (arXiv:2306.15595): each document alone
(documents shorter than ``min_tokens`` dropped, the first ``samples`` kept); windows of ``L - 1``
text tokens (``L`` when the tokenizer has no BOS) preceded by a BOS, moved by ``stride`` (default
256, YaRN's ``--sliding-window``), each scoring the tokens after the previous window's end;
perplexity = exp(mean of the windows' mean losses) over all windows of all documents. With
``truncate`` each document is cut to one window (YaRN's ``--truncate``, used for GovReport).

A model whose RoPE extension works keeps perplexity flat (or falling) past its native window; an
unextended one blows up there. The loss is training's
(:func:`longqa.ops.causal_lm.causal_lm_loss`, chunked cross-entropy), so a 32K window never
materialises 32K × vocab logits.

Usage::

    from longqa.eval.perplexity import run_perplexity
    run_perplexity(model, tok, spec, data="docs/", lengths=[2048, 8192, 16384], out_dir="runs/ppl")
    run_perplexity(model, tok, spec, data="pg19/", lengths=[8192, 16384], out_dir="runs/ppl-yarn",
                   protocol="yarn", min_tokens=16384, samples=10)
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


PROTOCOLS = ("stream", "yarn")
YARN_STRIDE = 256  # YaRN's --sliding-window default


def yarn_windows(
    n_tokens: int, length: int, stride: int, *, bos: bool, truncate: bool = False
) -> list[tuple[int, int, int]]:
    """YaRN's windows over one document: ``(begin, end, n_target)`` in document tokens.

    A window holds ``length - 1`` document tokens after a BOS (``length`` without one) and scores
    its last ``end - previous end`` tokens — at most every token of the window that has a
    predecessor in it. ``truncate``: only the first window (the document cut to it).
    """
    width = length - 1 if bos else length
    if truncate:
        n_tokens, stride = min(n_tokens, width), width
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + width, n_tokens)
        n_target = min(end - prev_end, end - begin + (1 if bos else 0) - 1)
        if n_target > 0:
            out.append((begin, end, n_target))
        prev_end = end
        if end == n_tokens:
            break
    return out


def yarn_documents(
    tokenizer: Any, docs: list[str], min_tokens: int | None, samples: int | None
) -> list[list[int]]:
    """Each document's ids (no special tokens), those under ``min_tokens`` dropped, first
    ``samples`` kept (YaRN's ``--dataset-min-tokens`` / ``--samples``)."""
    encoded = [list(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    kept = [ids for ids in encoded if len(ids) >= (min_tokens or 1)]
    return kept[:samples] if samples else kept


def _run_yarn_length(
    model: Any, docs: list[list[int]], length: int, stride: int, bos: int | None, truncate: bool,
    advance: Any,
) -> dict[str, Any]:  # fmt: skip
    losses: list[float] = []
    tokens = 0
    for doc in docs:
        for begin, end, n_target in yarn_windows(
            len(doc), length, stride, bos=bos is not None, truncate=truncate
        ):
            ids = ([bos] if bos is not None else []) + doc[begin:end]
            losses.append(window_nll(model, ids, n_target) / n_target)
            tokens += n_target
        advance()
    if not losses:
        raise LongqaError(f"no document has a window to score at length {length}")
    mean = sum(losses) / len(losses)
    return {"nll": mean, "perplexity": math.exp(mean), "windows": len(losses), "tokens": tokens}


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
    protocol: str = "stream",
    min_tokens: int | None = None,
    samples: int | None = None,
    truncate: bool = False,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Perplexity at each length (resumable per length); writes a perplexity-vs-length PNG.

    ``protocol``: ``stream`` (``max_tokens`` of the joined documents) or ``yarn`` (``min_tokens``,
    ``samples``, ``truncate``); see the module docstring.
    """
    if protocol not in PROTOCOLS:
        raise LongqaError(f"--protocol must be one of {', '.join(PROTOCOLS)} (got '{protocol}')")
    docs = load_documents(data)
    if protocol == "yarn":
        return _run_yarn(
            model, tokenizer, spec, docs=docs, data=data, lengths=lengths, out_dir=out_dir,
            stride=stride or YARN_STRIDE, min_tokens=min_tokens, samples=samples,
            truncate=truncate, model_name=model_name, overwrite=overwrite,
            show_progress=show_progress,
        )  # fmt: skip
    from longqa.eval.runner import ResultStore, progress_bar, spec_label

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
    return _summarize(model, store, out, lengths, model_name, spec, protocol="stream",
                      tokens=len(ids), stride=stride)  # fmt: skip


def _run_yarn(
    model: Any, tokenizer: Any, spec: RopeConfig | None, *, docs: list[str], data: str | Path,
    lengths: list[int], out_dir: str | Path, stride: int, min_tokens: int | None,
    samples: int | None, truncate: bool, model_name: str, overwrite: bool, show_progress: bool,
) -> dict[str, Any]:  # fmt: skip
    from contextlib import nullcontext

    from longqa.eval.runner import ResultStore, progress_bar, spec_label

    if stride < 1:
        raise LongqaError(f"--stride must be >= 1 (got {stride})")
    encoded = yarn_documents(tokenizer, docs, min_tokens, samples)
    if not encoded:
        raise LongqaError(f"{data}: no document has at least {min_tokens} tokens (--min-tokens)")
    bos = tokenizer.bos_token_id if getattr(tokenizer, "bos_token", None) is not None else None
    settings = {"stride": stride, "min_tokens": min_tokens, "samples": samples}
    settings.update(truncate=truncate, bos=bos is not None, documents=len(encoded))
    config = {
        "task": "perplexity",
        "protocol": "yarn",
        "model": model_name,
        "rope": spec.model_dump() if spec else None,
        "data": str(data),
        "lengths": lengths,
        **settings,
    }
    out = Path(out_dir)
    store = ResultStore(out, config, overwrite=overwrite)
    todo = [L for L in lengths if not store.done(f"L{L}")]
    progress, task = progress_bar(len(todo) * len(encoded), f"perplexity yarn [{spec_label(spec)}]")
    with progress if show_progress else nullcontext():
        for L in todo:
            row = _run_yarn_length(
                model, encoded, L, stride, bos, truncate, lambda: progress.advance(task)
            )
            store.append({"key": f"L{L}", "length": L, **row})
    return _summarize(model, store, out, lengths, model_name, spec, protocol="yarn",
                      tokens=sum(len(d) for d in encoded), **settings)  # fmt: skip


def _summarize(
    model: Any, store: Any, out: Path, lengths: list[int], model_name: str,
    spec: RopeConfig | None, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    from longqa.eval.plots import plot_by_length
    from longqa.eval.runner import spec_label

    rows = sorted((r for r in store.rows if r["length"] in lengths), key=lambda r: r["length"])
    by_length = {str(r["length"]): r["perplexity"] for r in rows}
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    summary = {
        "task": "perplexity",
        "metric": "perplexity",
        "perplexity": rows[-1]["perplexity"] if rows else None,
        "by_length": by_length,
        **extra,
        "model": model_name,
        "rope": spec_label(spec),
    }
    store.write_summary(summary)
    plot_by_length(
        by_length, out / "perplexity_by_length.png", "perplexity", logy=True, window=window
    )
    return summary
