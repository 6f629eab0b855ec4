"""Needle in a haystack: a fact sentence hidden at a depth of real text, asked for at the end.

After G. Kamradt's "LLMTest_NeedleInAHaystack" (2023): the haystack is real documents (essays),
cut to a token budget per context length; the needle is inserted at a depth (0 % = start, 100 % =
end), moved back to just after the previous sentence-ending punctuation so no sentence is split
(a line break inside hard-wrapped text is not a boundary; the original backs off to a '.' token),
and at depth 100 % appended after the haystack, the last thing before the question; the question follows;
the greedy answer is scored by normalised containment of the expected answer (SQuAD-style
normalisation: lower case, no punctuation/articles, single spaces). Output: ``results.jsonl``,
``summary.json`` (headline ``accuracy``), ``heatmap.json`` and ``heatmap.png`` (red → green).

Usage::

    from longqa.eval.needle import run_needle
    run_needle(model, tok, spec, haystack="../shared/corpora/paul_graham_essays",
               lengths=[1000, 2000, 4000], depths=[0, .25, .5, .75, 1], out_dir="runs/needle")
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, shared_essays
from longqa.data.prompting import prompt_ids

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
QUESTION = "What is the best thing to do in San Francisco?"
ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"
SYSTEM = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct."
INSTRUCTION = "Don't give information outside the document or repeat your findings."
TEXT_SUFFIXES = (".txt", ".md")
_SENTENCE_END = ".!?。！？"
_CLOSERS = "\"')]»”’」』）"


def default_haystack() -> Path | None:
    """The shared essays corpus next to the repository, when present."""
    return shared_essays()


def load_haystack(path: str | Path) -> str:
    """All text files (``.txt``/``.md``, sorted) under ``path`` joined by blank lines."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    else:
        raise LongqaError(f"haystack not found: {path}")
    texts = []
    for f in files:
        try:
            t = f.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            raise LongqaError(f"{f}: cannot read ({exc.strerror})") from None
        if t:
            texts.append(t)
    if not texts:
        raise LongqaError(
            f"{path}: no text to build a haystack from (expected non-empty .txt or .md files)"
        )
    return "\n\n".join(texts)


def sentence_boundary(text: str, pos: int) -> int:
    """The largest index ``i <= pos`` right after a sentence end (0 when there is none).

    A sentence ends at ``.!?`` (or their CJK forms), optionally followed by closing quotes or
    brackets, then whitespace or the end of the text. Line breaks alone are not boundaries: essays
    are hard-wrapped, and a newline there sits in the middle of a sentence.
    """
    pos = max(0, min(pos, len(text)))
    for i in range(pos, 0, -1):
        if i < len(text) and not text[i].isspace() and text[i - 1] not in "。！？":
            continue
        j = i
        while j > 0 and text[j - 1] in _CLOSERS:
            j -= 1
        if j > 0 and text[j - 1] in _SENTENCE_END:
            return i
    return 0


def insert_needle(text: str, needle: str, depth: float, char_pos: int | None = None) -> str:
    """``text`` with ``needle`` at ``depth`` (or ``char_pos``), moved back to a sentence end;
    at ``depth`` 1.0 the needle goes after all of ``text``."""
    if depth >= 1.0:
        head = text.rstrip()
        return f"{head} {needle}" if head else needle
    pos = round(depth * len(text)) if char_pos is None else char_pos
    i = sentence_boundary(text, pos)
    head, tail = text[:i].rstrip(" "), text[i:].lstrip(" ")
    sep_head = "" if not head or head.endswith("\n") else " "
    sep_tail = "" if not tail or tail.startswith("\n") else " "
    return f"{head}{sep_head}{needle}{sep_tail}{tail}"


def normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation and articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def containment_score(output: str, answer: str) -> float:
    """1.0 when the normalised answer occurs in the normalised output, else 0.0."""
    want = normalize(answer)
    return float(bool(want) and want in normalize(output))


def word_recall(output: str, answer: str) -> float:
    """Share of the answer's normalised words that appear in the output (a softer diagnostic)."""
    want = normalize(answer).split()
    got = set(normalize(output).split())
    return sum(w in got for w in want) / len(want) if want else 0.0


def needle_prompt(tokenizer: Any, context: str, question: str) -> list[int]:
    """Token ids of the prompt: document, question and instruction in the chat template (one BOS)."""
    user = f"<document>\n{context}\n</document>\n\n{question} {INSTRUCTION}"
    return prompt_ids(tokenizer, user, system=SYSTEM)


def make_items(
    tokenizer: Any,
    haystack: str,
    lengths: list[int],
    depths: list[float],
    *,
    needle: str = NEEDLE,
    question: str = QUESTION,
) -> list[dict[str, Any]]:
    """One item per (length, depth), ordered so consecutive prompts share long prefixes."""
    hay_ids = tokenizer(haystack, add_special_tokens=False)["input_ids"]
    overhead = len(needle_prompt(tokenizer, needle, question)) + 1
    items = []
    for length in lengths:
        budget = length - overhead
        if budget < 16:
            raise LongqaError(f"length {length} leaves no room for a haystack ({overhead} used)")
        if budget > len(hay_ids):
            raise LongqaError(
                f"haystack has only {len(hay_ids)} tokens; length {length} needs {budget} "
                f"(add more text files or use shorter --lengths)"
            )
        context = tokenizer.decode(hay_ids[:budget], skip_special_tokens=True)
        for depth in depths:
            char_pos = len(tokenizer.decode(hay_ids[: round(budget * depth)]))
            text = insert_needle(context, needle, depth, char_pos=min(char_pos, len(context)))
            ids = needle_prompt(tokenizer, text, question)
            items.append(
                {
                    "key": f"L{length}-d{depth:g}",
                    "length": length,
                    "depth": depth,
                    "insert_at": text.index(needle),
                    "ids": ids,
                }
            )
    items.sort(key=lambda it: -it["insert_at"])
    return items


def summarize(rows: list[dict[str, Any]], lengths: list[int], depths: list[float], **extra: Any):
    """``accuracy`` (mean score), ``by_length``, ``by_depth`` and ``grid[depth][length]``."""
    from longqa.eval.runner import mean_by

    cells = mean_by(rows, lambda r: (r["length"], r["depth"]), label=lambda k: k)
    grid = [[cells.get((L, d)) for L in lengths] for d in depths]
    scores = [r["score"] for r in rows]
    return {
        "task": "needle",
        "metric": "accuracy",
        "accuracy": sum(scores) / len(scores) if scores else 0.0,
        "n": len(rows),
        "by_length": mean_by(rows, "length"),
        "by_depth": mean_by(rows, "depth", label=lambda d: f"{d:g}"),
        "lengths": lengths,
        "depths": depths,
        "grid": grid,
        **extra,
    }


def run_needle(
    model: Any,
    tokenizer: Any,
    spec: RopeConfig | None,
    *,
    haystack: str | Path | None,
    lengths: list[int],
    depths: list[float],
    out_dir: str | Path,
    needle: str = NEEDLE,
    question: str = QUESTION,
    answer: str = ANSWER,
    max_new_tokens: int = 48,
    batch_size: int = 1,
    judge: Any = None,
    model_name: str = "",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the needle grid; writes results, summary, heatmap JSON + PNG.

    ``judge``: optional callable ``(question, answer, output) -> float in [0, 1]`` (e.g. an
    OpenAI-compatible model); its score is stored as ``judge`` and used as the cell score.
    """
    from longqa.eval.plots import plot_heatmap
    from longqa.eval.runner import run_generation_eval, spec_label

    if haystack is None:
        haystack = default_haystack()
        if haystack is None:
            raise LongqaError("no haystack: pass --haystack DIR (a folder of .txt files)")
    text = load_haystack(haystack)
    depths = [float(d) for d in depths]
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise LongqaError(f"depths must be within [0, 1] (got {depths})")
    config = {
        "haystack": str(haystack),
        "lengths": lengths,
        "depths": depths,
        "needle": needle,
        "placement": "after-sentence-end",  # runs placed at line breaks are not resumed into
        "question": question,
        "answer": answer,
        "judge": bool(judge),
        "max_new_tokens": max_new_tokens,
    }
    items = make_items(tokenizer, text, lengths, depths, needle=needle, question=question)

    def score(it: dict[str, Any], output: str) -> dict[str, Any]:
        row = {
            "contains": containment_score(output, answer),
            "recall": word_recall(output, answer),
        }
        if judge is not None:
            row["judge"] = float(judge(question, answer, output))
        row["score"] = row.get("judge", row["contains"])
        return row

    summary, out = run_generation_eval(
        model, tokenizer, spec, task="needle", config=config, items=items, score=score,
        summarize=lambda rows, out: summarize(
            rows, lengths, depths, model=model_name, rope=spec_label(spec), out_dir=str(out)
        ),
        max_new_tokens=max_new_tokens, out_dir=out_dir, model_name=model_name,
        batch_size=batch_size, overwrite=overwrite, show_progress=show_progress,
    )  # fmt: skip
    heat = {k: summary[k] for k in ("lengths", "depths", "grid", "accuracy")}
    atomic_write_json(out / "heatmap.json", heat)
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    plot_heatmap(
        summary["grid"],
        lengths,
        depths,
        out / "heatmap.png",
        title=f"needle: {model_name or 'model'} [{spec_label(spec)}]",
        window=window,
    )
    return summary


JUDGE_PROMPT = (
    "Question: {question}\nReference answer: {answer}\nResponse: {output}\n\n"
    "Does the response give the reference answer (same meaning, wording may differ)? "
    "Reply with a single digit: 1 for yes, 0 for no."
)


def make_judge(model: str, base_url: str | None = None) -> Any:
    """An OpenAI-compatible judge ``(question, answer, output) -> 0.0 | 1.0`` (``longqa.data.llm``)."""
    from longqa.data.llm import LLMClient, LLMError, run_sync

    def judge(question: str, answer: str, output: str) -> float:
        async def ask() -> str:
            client = LLMClient(base_url=base_url, model=model, concurrency=1)
            try:
                prompt = JUDGE_PROMPT.format(question=question, answer=answer, output=output)
                messages = [{"role": "user", "content": prompt}]
                reply = await client.acomplete(messages, temperature=0.0, max_tokens=4)
                return reply.text
            finally:
                await client.aclose()

        try:
            text = run_sync(ask())
        except LLMError as exc:
            raise LongqaError(f"judge {model}: {exc}") from None
        match = re.search(r"[01]", text)
        return float(match.group()) if match else 0.0

    return judge
