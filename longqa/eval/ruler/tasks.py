"""The RULER task table: 13 task names, their family, knobs, templates and answer prefixes.

Names and knobs are RULER's ``scripts/synthetic.yaml`` (Hsieh et al., "RULER: What's the Real
Context Size of Your Long-Context Language Models?", arXiv:2404.06654); templates, answer
prefixes and tokens to generate are its ``scripts/data/synthetic/constants.py``; the metric per
family is its ``scripts/eval/synthetic/constants.py``. A family is one generator module
(``niah``, ``variable_tracking``, ``common_words``, ``freq_words``, ``qa``) registered in
:data:`GENERATORS`; a task is a family plus knob values.

Usage::

    from longqa.eval.ruler.tasks import TASKS, resolve_tasks
    spec = TASKS["niah_multikey_1"]; spec.family, spec.knobs["num_needle_k"]
    resolve_tasks("all")            # the 13 names in RULER's order
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longqa.core.errors import LongqaError


@dataclass(frozen=True)
class Family:
    template: str
    answer_prefix: str
    tokens_to_generate: int
    metric: str  # "all" (string_match_all) or "part" (string_match_part)


FAMILIES: dict[str, Family] = {
    "niah": Family(
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
        "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
        "all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
        "all",
    ),
    "variable_tracking": Family(
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
        "above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
        "variables are assigned the value {query}, they are: ",
        30,
        "all",
    ),
    "common_words": Family(
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most "
        "common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
        "all",
    ),
    "freq_words": Family(
        "Read the following coded text and track the frequency of each coded word. Find the three "
        "most frequently appeared coded words. {context}\nQuestion: Do not provide any "
        "explanation. Please ignore the dots '....'. What are the three most frequently appeared "
        "words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
        "all",
    ),
    "qa": Family(
        "Answer the question based on the given documents. Only give me the answer and do not "
        "output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer "
        "the question based on the given documents. Only give me the answer and do not output "
        "any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
        "part",
    ),
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_to_generate(self) -> int:
        return FAMILIES[self.family].tokens_to_generate

    @property
    def metric(self) -> str:
        return FAMILIES[self.family].metric


def _niah(haystack: str, k: str, v: str, nk: int = 1, nv: int = 1, nq: int = 1) -> dict[str, Any]:
    return {
        "type_haystack": haystack,
        "type_needle_k": k,
        "type_needle_v": v,
        "num_needle_k": nk,
        "num_needle_v": nv,
        "num_needle_q": nq,
    }


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("niah_single_1", "niah", _niah("noise", "words", "numbers")),
        TaskSpec("niah_single_2", "niah", _niah("essay", "words", "numbers")),
        TaskSpec("niah_single_3", "niah", _niah("essay", "words", "uuids")),
        TaskSpec("niah_multikey_1", "niah", _niah("essay", "words", "numbers", nk=4)),
        TaskSpec("niah_multikey_2", "niah", _niah("needle", "words", "numbers")),
        TaskSpec("niah_multikey_3", "niah", _niah("needle", "uuids", "uuids")),
        TaskSpec("niah_multivalue", "niah", _niah("essay", "words", "numbers", nv=4)),
        TaskSpec("niah_multiquery", "niah", _niah("essay", "words", "numbers", nq=4)),
        TaskSpec(
            "vt", "variable_tracking", {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}
        ),
        TaskSpec(
            "cwe", "common_words", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10, "num_fewshot": 1}
        ),
        TaskSpec("fwe", "freq_words", {"alpha": 2.0, "coded_wordlen": 6, "vocab_size": -1}),
        TaskSpec("qa_1", "qa", {"dataset": "squad"}),
        TaskSpec("qa_2", "qa", {"dataset": "hotpotqa"}),
    )
}


@dataclass
class RulerSample:
    """One generated sample: the user message, the answer prefix and the expected strings.

    ``spans`` are the character spans, in ``input``, of the inserted needles (niah), chain
    statements (vt) or gold documents (qa); ``meta`` holds task-specific facts for checks.
    """

    input: str
    answer_prefix: str
    outputs: list[str]
    spans: list[tuple[int, int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenContext:
    """What generators share: the word pool, essay words, QA documents and the target length."""

    words: tuple[str, ...]
    essay_words: list[str] | None = None
    word_source: str | None = None  # the folder ``words`` came from (None: generated only)
    length: int = 4096
    qa_data: dict[str, Any] = field(default_factory=dict)


Generator = Callable[[TaskSpec, int, str, GenContext], RulerSample]


def resolve_tasks(text: str | list[str]) -> list[str]:
    """``all``, ``niah`` (every niah task), or comma-separated names → task names in table order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    parts = [p.strip() for p in parts if p.strip()]
    wanted: set[str] = set()
    for p in parts:
        if p == "all":
            wanted.update(TASKS)
        elif p in TASKS:
            wanted.add(p)
        elif any(t.family == p or t.name.startswith(p + "_") for t in TASKS.values()):
            wanted.update(n for n, t in TASKS.items() if t.family == p or n.startswith(p + "_"))
        else:
            raise LongqaError(f"--tasks: unknown RULER task '{p}'; known: all, {', '.join(TASKS)}")
    if not wanted:
        raise LongqaError("--tasks: no task given")
    return [n for n in TASKS if n in wanted]


def fill(template: str, context: str, **values: Any) -> tuple[str, int]:
    """``template`` with ``values`` and ``context`` filled in, and where the context starts.

    The context may hold braces, so it goes in after ``str.format`` of the rest.
    """
    head, tail = template.split("{context}")
    head, tail = head.format(**values), tail.format(**values)
    return head + context + tail, len(head)


def shift(spans: list[tuple[int, int]], offset: int) -> list[tuple[int, int]]:
    return [(a + offset, b + offset) for a, b in spans]
