"""Passkey retrieval: can the model find a number hidden at some depth in long filler text?

The standard prompt of Mohtashami & Jaggi, "Landmark Attention" (2023), also used by the YaRN and
LongLoRA evaluations: a task line, repeated filler sentences around "The pass key is N. Remember it.
N is the pass key.", and the question "What is the pass key? The pass key is". Greedy decoding of a
few tokens; a trial is correct when the first integer of the output equals N. The prompt is raw text
(no chat template, as in the YaRN/LongLoRA scripts), preceded by the tokenizer's BOS when
``tokenizer(text)`` adds one (``longqa.data.prompting.special_prefix``).

Usage::

    from longqa.eval.passkey import run_passkey
    summary = run_passkey(model, tok, spec, lengths=[4096, 12288], trials=10, out_dir="runs/pk")
    summary["accuracy"], summary["by_length"]
"""

from __future__ import annotations

import random
import re
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.data.prompting import special_prefix

TASK_LINE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
QUESTION = "What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def info_line(passkey: int) -> str:
    return f"The pass key is {passkey}. Remember it. {passkey} is the pass key."


def filler_text(n_sentences: int, start: int = 0) -> str:
    """``n_sentences`` filler sentences, continuing the cycle at sentence index ``start``."""
    return " ".join(islice(cycle(FILLER), start, start + n_sentences))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def key_sentence_ids(tokenizer: Any, passkey: int) -> list[int]:
    """Token ids of the key line as it sits inside :func:`passkey_ids`' prompt (with its newlines)."""
    return _ids(tokenizer, "\n" + info_line(passkey) + "\n")


def passkey_ids(tokenizer: Any, passkey: int, length: int, depth: float) -> list[int]:
    """The passkey prompt as exactly ``length`` token ids, the key at ``depth`` of the filler.

    Parts are tokenised separately and joined (task line, filler, key line, filler, question), so
    every prompt of one length has the same token count and the same filler prefix up to its key —
    the runner reuses that prefix's KV cache, and a dynamic RoPE scale (fixed from the prompt
    length) is identical across trials. The key goes at the sentence start at or before ``depth``;
    the filler after it is cut at the token where the length is reached (as in the original, which
    cuts the filler by characters).
    """
    if not 0.0 <= depth <= 1.0:
        raise LongqaError(f"depth must be within [0, 1] (got {depth})")
    head = special_prefix(tokenizer) + _ids(tokenizer, TASK_LINE + "\n")  # one BOS when it has one
    info = key_sentence_ids(tokenizer, passkey)
    tail = _ids(tokenizer, "\n" + QUESTION)
    budget = length - len(head) - len(info) - len(tail)
    if budget < 0:
        raise LongqaError(f"length {length} is too short for the passkey prompt")
    sentences = [_ids(tokenizer, " " + f) for f in FILLER]
    filler: list[int] = []
    starts: list[int] = []
    for sent in cycle(sentences):
        if len(filler) > budget:
            break
        starts.append(len(filler))
        filler.extend(sent)
    target = round(depth * budget)
    k = max(st for st in starts if st <= target)
    return head + filler[:k] + info + filler[k:budget] + tail


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def score_passkey(output: str, expected: int) -> bool:
    """Correct when the first integer in the output equals the pass key."""
    return first_integer(output) == expected


def make_trials(
    tokenizer: Any,
    lengths: list[int],
    trials: int,
    depths: tuple[float, ...] = DEFAULT_DEPTHS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One item per trial: trial ``i`` sits at ``depths[i % len(depths)]``, key drawn from seed.

    Items are ordered by length, then by depth descending, so consecutive prompts share the longest
    possible token prefix (the runner reuses its KV cache).
    """
    if trials < 1:
        raise LongqaError("--trials must be >= 1")
    items = []
    for length in lengths:
        for t in range(trials):
            depth = float(depths[t % len(depths)])
            key = random.Random(f"{seed}-{length}-{t}").randint(1, 50000)
            ids = passkey_ids(tokenizer, key, length, depth)
            items.append(
                {
                    "key": f"L{length}-t{t}",
                    "length": length,
                    "depth": depth,
                    "trial": t,
                    "expected": key,
                    "ids": ids,
                }
            )
    items.sort(key=lambda it: (it["length"], -it["depth"], it["trial"]))
    return items


def summarize(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``accuracy`` overall, ``by_length``, ``by_depth`` and the ``table`` length → depth → acc."""
    from longqa.eval.runner import mean_by

    table: dict[str, dict[str, float]] = {}
    for (length, depth), acc in mean_by(rows, lambda r: (r["length"], r["depth"]), "correct",
                                        label=lambda k: k).items():  # fmt: skip
        table.setdefault(str(length), {})[f"{depth:g}"] = acc
    return {
        "task": "passkey",
        "metric": "accuracy",
        "accuracy": sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0,
        "n": len(rows),
        "by_length": mean_by(rows, "length", "correct"),
        "by_depth": mean_by(rows, "depth", "correct", label=lambda d: f"{d:g}"),
        "table": table,
        **extra,
    }


def run_passkey(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    lengths: list[int],
    trials: int = 10,
    depths: tuple[float, ...] = DEFAULT_DEPTHS,
    out_dir: str | Path | None = None,
    max_new_tokens: int = 8,
    seed: int = 0,
    batch_size: int = 1,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
    plot: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the passkey grid and return the summary (also written under ``out_dir``)."""
    from longqa.eval.runner import run_generation_eval, spec_label

    config = {
        "lengths": lengths,
        "trials": trials,
        "depths": list(depths),
        "seed": seed,
        "max_new_tokens": max_new_tokens,
    }
    summary, out = run_generation_eval(
        model, tokenizer, spec, task="passkey", config=config,
        items=make_trials(tokenizer, lengths, trials, depths, seed),
        score=lambda it, text: {"correct": score_passkey(text, it["expected"])},
        summarize=lambda rows, out: summarize(
            rows, model=model_name, rope=spec_label(spec), out_dir=str(out)
        ),
        max_new_tokens=max_new_tokens, out_dir=out_dir, model_name=model_name,
        batch_size=batch_size, overwrite=overwrite, show_progress=show_progress,
    )  # fmt: skip
    if plot:
        from longqa.eval.plots import plot_by_length

        plot_by_length(
            summary["by_length"], out / "accuracy_by_length.png", "passkey accuracy", ylim=(0, 1)
        )
    return summary
