"""The one runner every evaluation shares: load, generate greedily, keep resumable result files.

Every generation eval (passkey, needle, passage retrieval, RULER) is :func:`run_generation_eval`
with its own items, score and summary; :func:`mean_by` is the per-length (per-depth, per-task)
summary they share. By hand (what that loop does, callable from a notebook)::

    from longqa.eval.runner import GreedyGenerator, ResultStore
    from longqa.models.load import load
    model, tok, spec = load("smollm2-135m", adapter=None, rope=RopeConfig(method="yarn", factor=2))
    gen = GreedyGenerator(model, tok, rope=spec)
    store = ResultStore("runs/pk", config={"task": "passkey", ...})
    for item in items:
        if not store.done(item.key):
            store.append({"key": item.key, "output": gen.generate([item.ids], 8)[0], ...})

Result files in ``--out DIR``: ``results.jsonl`` (one JSON object per finished sample, appended and
flushed as it completes, so a rerun skips what is done), ``run.json`` (the settings; a rerun with
different settings is refused instead of mixing runs) and ``summary.json`` (written atomically; the
task's headline metric sits under the key named by its ``"metric"`` field).

KV-cache reuse: with batch size 1 the generator keeps the previous prompt's cache and reuses its
longest common token prefix (``DynamicCache.crop``), the documented HF prefix-caching pattern. Tasks
order prompts so consecutive ones share most of their prefix. Dynamic RoPE methods fix their scale
from the full prompt length at prefill, so there a cache is reused only between prompts of equal
length (identical scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.interrupt import check_stop, graceful
from longqa.eval.results import (  # noqa: F401  (re-exported: one import for task modules)
    RESULTS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    ResultStore,
    read_run,
)
from longqa.ops.rope_scaling import is_dynamic


def spec_label(spec: RopeConfig | None) -> str:
    """Short human label of a spec, e.g. ``yarn(factor=2.0)`` or ``none``."""
    if spec is None or spec.method == "none":
        return "none"
    defaults = RopeConfig(method=spec.method).model_dump()
    changed = {k: v for k, v in spec.model_dump().items() if k != "method" and v != defaults[k]}
    inner = ", ".join(f"{k}={v}" for k, v in changed.items())
    return f"{spec.method}({inner})" if inner else spec.method


def context_warnings(model: Any, spec: RopeConfig | None, lengths: Iterable[int]) -> list[str]:
    """Messages for requested context lengths above what the model + RoPE spec can address.

    Also emitted through :func:`warnings.warn` so notebook users see them.
    """
    from longqa.patch.rope import addressable_length

    limit = addressable_length(getattr(model, "config", None), spec)
    if not limit:
        return []
    msgs = []
    for length in sorted(set(lengths)):
        if length > limit:
            msgs.append(
                f"context length {length} is above the {limit} tokens this model can address with "
                f"rope '{spec_label(spec)}'; expect it to fail at that length "
                f"(use --rope with a larger --rope-factor, or dynamic-yarn)"
            )
    for msg in msgs:
        warnings.warn(msg, stacklevel=2)
    return msgs


# -------------------------------------------------------------------------------------- generation
def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class GreedyGenerator:
    """Greedy decoding with optional batched prompts and KV-cache reuse of shared prefixes.

    Prefix reuse is on by default (``reuse_prefix``). With a dynamic RoPE method the scale is
    fixed from the prompt length at prefill, so a cached prefix is reused only by a prompt of the
    same length (same scale, exact); other prompts are prefilled from scratch.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        rope: RopeConfig | None = None,
        reuse_prefix: bool | None = None,
        min_reuse: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.dynamic = rope is not None and is_dynamic(rope.method)
        self.reuse_prefix = True if reuse_prefix is None else reuse_prefix
        self.min_reuse = min_reuse
        self.reused_tokens = 0
        self.prefilled_tokens = 0
        self._ids: list[int] | None = None
        self._cache: Any = None
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return list(prompt)

    def _gen_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        return {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "pad_token_id": self.pad_id,
            "return_dict_in_generate": True,
        }

    def _one(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import torch
        from transformers import DynamicCache

        device = self.model.device
        cache = None
        same_scale = not self.dynamic or (self._ids is not None and len(self._ids) == len(ids))
        if self.reuse_prefix and same_scale and self._ids is not None and self._cache is not None:
            n = min(common_prefix_len(self._ids, ids), len(ids) - 1)
            if n >= self.min_reuse:
                cache = self._cache
                extra = cache.get_seq_length() - n
                if extra > 0:
                    cache.crop(-extra)  # transformers 5: a negative count of tokens to drop
                self.reused_tokens += n
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        self.prefilled_tokens += len(ids) - cache.get_seq_length()
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                cache=cache,
                **self._gen_kwargs(max_new_tokens),
            )
        if self.reuse_prefix:
            self._ids, self._cache = ids, out.cache
        return out.sequences[0, len(ids) :].tolist()

    def _batch(self, batch: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        import torch

        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):  # left padding: the last prompt token is aligned
            ids[i, width - len(x) :] = torch.tensor(x)
            mask[i, width - len(x) :] = 1
        self.prefilled_tokens += int(mask.sum())
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                **self._gen_kwargs(max_new_tokens),
            )
        return [row[width:].tolist() for row in out.sequences]

    def generate_ids(
        self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int, batch_size: int = 1
    ) -> list[list[int]]:
        """New token ids for each prompt (eos/pad stripped)."""
        encoded = [self.encode(p) for p in prompts]
        if any(not x for x in encoded):
            raise LongqaError("empty prompt")
        outs: list[list[int]] = []
        if batch_size <= 1:
            outs = [self._one(x, max_new_tokens) for x in encoded]
        else:
            for i in range(0, len(encoded), batch_size):
                outs.extend(self._batch(encoded[i : i + batch_size], max_new_tokens))
        stops = {self.tokenizer.eos_token_id, self.pad_id}
        cleaned = []
        for seq in outs:
            cut = next((j for j, t in enumerate(seq) if t in stops), len(seq))
            cleaned.append(seq[:cut])
        return cleaned

    def generate(
        self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int, batch_size: int = 1
    ) -> list[str]:
        """Decoded greedy continuations of ``prompts`` (text or token ids)."""
        ids = self.generate_ids(prompts, max_new_tokens, batch_size)
        return [self.tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    """``user`` wrapped in the tokenizer's chat template (plain text when it has none); encode it
    with :func:`longqa.data.prompting.encode_for_generation` (one BOS)."""
    from longqa.data.prompting import chat_text

    return chat_text(tokenizer, user, system)


def progress_bar(total: int, description: str):
    """A rich progress bar (context manager); ``advance()`` via the returned ``(progress, task)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    from rich.markup import escape

    return progress, progress.add_task(escape(description), total=total)


def run_items(
    items: Sequence[dict[str, Any]],
    gen: GreedyGenerator,
    store: ResultStore,
    *,
    max_new_tokens: int,
    score: Any,
    description: str,
    batch_size: int = 1,
    show_progress: bool = True,
    score_ids: bool = False,
) -> int:
    """Generate for every item not yet in ``store`` and append its scored row.

    Each item is a dict with ``key``, ``ids`` (prompt token ids) and any fields to keep; ``score``
    maps ``(item, output_text) -> dict`` of extra fields (e.g. ``correct``); with ``score_ids`` it
    also receives the new token ids, ``(item, output_text, ids)``. Each row records
    ``prompt_tokens``, ``new_tokens`` and ``output``. Returns how many samples ran now (the rest
    were already done).
    """
    todo = [it for it in items if not store.done(it["key"])]
    progress, task = progress_bar(len(items), description)
    progress.update(task, completed=len(items) - len(todo))
    step = max(1, batch_size)
    with progress if show_progress else nullcontext(), graceful():
        for i in range(0, len(todo), step):
            check_stop()  # Ctrl-C: the rows so far are in the store; a rerun goes on
            chunk = todo[i : i + step]
            news = gen.generate_ids([it["ids"] for it in chunk], max_new_tokens, batch_size=step)
            for it, new in zip(chunk, news, strict=True):
                out = gen.tokenizer.decode(new, skip_special_tokens=True)
                row = {k: v for k, v in it.items() if k != "ids"}
                row["prompt_tokens"] = len(it["ids"])
                row["new_tokens"] = len(new)
                row["output"] = out
                row.update(score(it, out, new) if score_ids else score(it, out))
                store.append(row)
            progress.advance(task, len(chunk))
    return len(todo)


def mean_by(
    rows: Iterable[dict[str, Any]],
    group: str | Callable[[dict[str, Any]], Any],
    value: str = "score",
    label: Callable[[Any], str] = str,
) -> dict[str, float]:
    """The per-group mean of ``row[value]`` (booleans count 0/1), groups in sorted order, keyed by
    ``label(group)``: ``mean_by(rows, "length")`` is every task's ``by_length``."""
    sums: dict[Any, list[float]] = {}
    for r in rows:
        key = group(r) if callable(group) else r[group]
        sums.setdefault(key, []).append(float(r[value]))
    return {label(k): sum(v) / len(v) for k, v in sorted(sums.items())}


def run_generation_eval(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    task: str,
    config: dict[str, Any],
    items: Sequence[dict[str, Any]],
    score: Callable[..., dict[str, Any]],
    summarize: Callable[[list[dict[str, Any]], Path], dict[str, Any]],
    max_new_tokens: int | Callable[[dict[str, Any]], int],
    out_dir: str | Path | None = None,
    label: Callable[[dict[str, Any]], str] | None = None,
    model_name: str = "",
    batch_size: int = 1,
    overwrite: bool = False,
    show_progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """The one loop of every generation eval (passkey, needle, passage retrieval, RULER).

    Opens the resumable store in ``out_dir`` (a temporary folder when None) with the settings
    ``{"task", "model", "rope", **config}``, generates greedily for every item not yet done (in
    groups of equal ``label(item)`` and ``max_new_tokens``, one progress bar each), scores each
    output with ``score(item, text)``, then writes ``summarize(rows, out)`` as ``summary.json``.
    Returns the summary and the folder.
    """
    import tempfile

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"longqa-{task}-"))
    settings = {"task": task, "model": model_name, "rope": spec.model_dump() if spec else None}
    store = ResultStore(out, {**settings, **config}, overwrite=overwrite)
    gen = GreedyGenerator(model, tokenizer, rope=spec)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for it in items:
        budget = max_new_tokens(it) if callable(max_new_tokens) else max_new_tokens
        groups.setdefault((label(it) if label else task, budget), []).append(it)
    for (name, budget), group in groups.items():
        run_items(
            group, gen, store, max_new_tokens=budget, score=score,
            description=f"{name} [{spec_label(spec)}]", batch_size=batch_size,
            show_progress=show_progress,
        )  # fmt: skip
    wanted = {it["key"] for it in items}
    summary = summarize([r for r in store.rows if r["key"] in wanted], out)
    store.write_summary(summary)
    return summary, out
