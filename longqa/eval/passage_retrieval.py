"""LongBench passage retrieval (``passage_retrieval_en`` / ``passage_retrieval_zh``), scored as
LongBench scores it.

Reference: Bai et al., "LongBench" (2023), https://github.com/THUDM/LongBench — prompts from
``config/dataset2prompt.json``, 32 new tokens from ``config/dataset2maxlen.json``, middle truncation
and chat template as in ``pred.py``, scores from ``metrics.py`` (``retrieval_score`` /
``retrieval_zh_score``) averaged ×100 as in ``eval.py``. The prompt starts with the tokenizer's BOS
exactly once (``pred.py`` encodes with ``tokenizer(prompt)``, which adds it;
``longqa.data.prompting``).

Prompt token budget (``budget``), recorded in ``summary.json``:

* ``longbench`` — LongBench's ``config/model2maxlen.json``: 3500 / 7500 / 15500 / 31500 tokens for
  4K / 8K / 16K / 32K models (window − 500 for other windows), the window being what the model and
  its RoPE spec address. Use it for numbers next to LongBench's tables.
* ``window`` (default) — the addressable window − 32 new tokens − 64 for the chat template.
* an explicit ``max_length`` overrides both.

Input: LongBench JSONL, one object per line with ``input`` (the abstract), ``context`` (the
numbered paragraphs), ``answers`` (e.g. ``["Paragraph 7"]``), ``length`` and ``_id``.

Usage::

    from longqa.eval.passage_retrieval import run_passage_retrieval, retrieval_score
    retrieval_score("Paragraph 3, Paragraph 5", "Paragraph 3")  # 0.5
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.paths import iter_jsonl
from longqa.data.prompting import encode_for_generation

PROMPTS = {
    "en": (
        "Here are {count} paragraphs from Wikipedia, along with an abstract. Please determine which "
        "paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}"
        "\n\nPlease enter the number of the paragraph that the abstract is from. The answer format "
        'must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: '
    ),
    "zh": (
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n"
        '下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式'
        "\n\n答案是："
    ),
}
LONGBENCH_PARAGRAPHS = 30  # every LongBench sample has 30; the prompt states each row's own count
ANSWER_PATTERN = {"en": r"Paragraph (\d+)", "zh": r"段落(\d+)"}
MAX_NEW_TOKENS = 32
# LongBench config/model2maxlen.json, by model window (llama2-7b-chat-4k, xgen-7b-8k,
# vicuna-v1.5-7b-16k, longchat-v1.5-7b-32k / chatglm2-6b-32k)
LONGBENCH_MAXLEN = {4096: 3500, 8192: 7500, 16384: 15500, 32768: 31500}
BUDGETS = ("window", "longbench")
REQUIRED_FIELDS = {"input": str, "context": str, "answers": list, "length": int, "_id": str}


def retrieval_score(prediction: str, ground_truth: str, lang: str = "en") -> float:
    """LongBench's rule: the id N from "Paragraph N" (or "段落N") in the ground truth; the score is
    the share of all integers in the prediction that equal N (0 when it has none)."""
    match = re.search(ANSWER_PATTERN[lang], ground_truth)
    if match is None:
        raise LongqaError(f"answer '{ground_truth}' has no '{ANSWER_PATTERN[lang]}' paragraph id")
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(n == match.group(1) for n in numbers) / len(numbers)


def sample_score(prediction: str, answers: list[str], lang: str) -> float:
    """Best score over the sample's ground truths (LongBench ``scorer``)."""
    return max((retrieval_score(prediction, a, lang) for a in answers), default=0.0)


def read_longbench(path: str | Path) -> list[dict[str, Any]]:
    """Validated LongBench rows; a bad line raises naming ``file:line`` and the field."""
    path = Path(path)
    if not path.is_file():
        raise LongqaError(f"LongBench file not found: {path}")
    rows = []
    for lineno, row in iter_jsonl(path):
        for field, kind in REQUIRED_FIELDS.items():
            if field not in row:
                raise LongqaError(f"{path}:{lineno}: field '{field}' missing")
            if not isinstance(row[field], kind) or isinstance(row[field], bool):
                raise LongqaError(
                    f"{path}:{lineno}: field '{field}' should be {kind.__name__}, "
                    f"got {type(row[field]).__name__}"
                )
        if not row["answers"] or not all(isinstance(a, str) for a in row["answers"]):
            raise LongqaError(f"{path}:{lineno}: field 'answers' should be a list of strings")
        rows.append(row)
    if not rows:
        raise LongqaError(f"{path}: no samples")
    return rows


def detect_lang(rows: list[dict[str, Any]], path: str | Path) -> str:
    """``zh`` or ``en``: the rows' ``language`` field, else their ``dataset`` name
    (``passage_retrieval_zh``), else the file name."""
    first = rows[0]
    lang = str(first.get("language") or "").lower()
    if lang in PROMPTS:
        return lang
    for hint in (str(first.get("dataset") or ""), Path(path).stem):
        hint = hint.lower()
        if hint.endswith("_zh") or "_zh_" in hint or hint.endswith("-zh"):
            return "zh"
        if hint.endswith("_en") or "_en_" in hint or hint.endswith("-en"):
            return "en"
    return "en"


def truncate_middle(tokenizer: Any, prompt: str, max_length: int) -> str:
    """Keep the first and last ``max_length // 2`` tokens when the prompt is longer (LongBench).

    Counted as ``pred.py`` counts: the ids of ``tokenizer(prompt)``, special tokens included, so a
    tokenizer that adds a BOS spends one token of the budget on it (the halves are decoded without
    special tokens and the BOS comes back once when the prompt is encoded): a BOS tokenizer gets
    ``max_length`` prompt ids, not ``max_length + 1``.
    """
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= max_length:
        return prompt
    half = max_length // 2
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(
        ids[-half:], skip_special_tokens=True
    )


def build_prompt(tokenizer: Any, row: dict[str, Any], lang: str, max_length: int) -> str:
    """LongBench's prompt for ``row``, middle-truncated to ``max_length`` tokens, in the chat
    template (encode it with :func:`longqa.data.prompting.encode_for_generation`)."""
    from longqa.data.prompting import chat_text

    raw = PROMPTS[lang].format(
        count=paragraph_count(row["context"], lang), context=row["context"], input=row["input"]
    )
    return chat_text(tokenizer, truncate_middle(tokenizer, raw, max_length))


def paragraph_count(context: str, lang: str) -> int:
    """Numbered paragraphs in ``context`` ("Paragraph N:" / "段落N：" at a line start); LongBench's
    30 when none is numbered that way."""
    label = r"^Paragraph \d+:" if lang == "en" else r"^段落\d+[：:]"
    return len(re.findall(label, context, flags=re.M)) or LONGBENCH_PARAGRAPHS


def model_window(model: Any, spec: RopeConfig | None) -> int:
    """What the model + RoPE spec address (the model's window when the spec sets no limit)."""
    config = getattr(model, "config", None)
    from longqa.patch.rope import addressable_length

    limit = addressable_length(config, spec)
    return int(limit or getattr(config, "max_position_embeddings", None) or 4096)


def longbench_max_length(window: int) -> int:
    """LongBench's ``model2maxlen`` entry for a model of ``window`` tokens."""
    return LONGBENCH_MAXLEN.get(int(window), max(64, int(window) - 500))


def default_max_length(model: Any, spec: RopeConfig | None, budget: str = "window") -> int:
    """Prompt token budget under rule ``budget`` (see the module docstring)."""
    if budget not in BUDGETS:
        raise LongqaError(f"--budget must be one of {', '.join(BUDGETS)} (got '{budget}')")
    window = model_window(model, spec)
    if budget == "longbench":
        return longbench_max_length(window)
    return max(64, window - MAX_NEW_TOKENS - 64)


def make_items(
    tokenizer: Any, rows: list[dict[str, Any]], lang: str, max_length: int
) -> list[dict[str, Any]]:
    """One item per row: key, length, answers and the prompt's token ids (one BOS)."""
    items = []
    for row in rows:
        for a in row["answers"]:  # fail early on answers without a paragraph id
            retrieval_score("", a, lang)
        ids = encode_for_generation(tokenizer, build_prompt(tokenizer, row, lang, max_length))
        items.append(
            {"key": row["_id"], "length": row["length"], "answers": row["answers"], "ids": ids}
        )
    return items


def summarize(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``score`` = LongBench's ×100 mean (2 decimals); ``accuracy`` = share of exact hits."""
    scores = [r["score"] for r in rows]
    n = len(scores)
    buckets: dict[str, list[float]] = {"0-4k": [], "4-8k": [], "8k+": []}
    for r in rows:  # LongBench-E length buckets
        key = "0-4k" if r["length"] < 4000 else "4-8k" if r["length"] < 8000 else "8k+"
        buckets[key].append(r["score"])
    return {
        "task": "passage-retrieval",
        "metric": "score",
        "score": round(100 * sum(scores) / n, 2) if n else 0.0,
        "accuracy": sum(s == 1.0 for s in scores) / n if n else 0.0,
        "n": n,
        "by_length": {k: round(100 * sum(v) / len(v), 2) for k, v in buckets.items() if v},
        **extra,
    }


def run_passage_retrieval(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    data: str | Path,
    out_dir: str | Path,
    lang: str | None = None,
    max_length: int | None = None,
    budget: str = "window",
    limit: int | None = None,
    batch_size: int = 1,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) passage retrieval on a LongBench JSONL file; returns the summary."""
    from longqa.eval.runner import run_generation_eval, spec_label

    rows = read_longbench(data)[:limit] if limit else read_longbench(data)
    lang = lang or detect_lang(rows, data)
    if lang not in PROMPTS:
        raise LongqaError(f"--lang must be one of {', '.join(PROMPTS)} (got '{lang}')")
    rule = "explicit" if max_length else budget
    max_length = max_length or default_max_length(model, spec, budget)
    config = {"data": str(data), "lang": lang, "budget": rule, "max_length": max_length}
    summary, _ = run_generation_eval(
        model, tokenizer, spec, task="passage-retrieval", config=config,
        items=make_items(tokenizer, rows, lang, max_length),
        score=lambda it, out: {"score": sample_score(out, it["answers"], lang)},
        summarize=lambda done, out: summarize(
            done, dataset=f"passage_retrieval_{lang}", model=model_name, rope=spec_label(spec),
            budget=rule, max_length=max_length,
        ),
        max_new_tokens=MAX_NEW_TOKENS, out_dir=out_dir, label=lambda it: f"passage_retrieval_{lang}",
        model_name=model_name, batch_size=batch_size, overwrite=overwrite,
        show_progress=show_progress,
    )  # fmt: skip
    return summary
