"""Build a LongBench-format passage-retrieval set from any local corpus.

``longqa build-data --task passage-retrieval --corpus DIR --out OUT`` writes
``OUT/passage_retrieval_<lang>.jsonl`` (the fields of LongBench's ``passage_retrieval_en`` /
``_zh``: ``input``, ``context``, ``answers``, ``length``, ``_id``, ``dataset``, ``language``,
``all_classes``) and ``OUT/stats.json``, ready for ``longqa eval passage-retrieval --data``.

Each sample: ``num_paragraphs`` paragraphs drawn from the corpus, numbered like LongBench's
("Paragraph 1: …" / "段落1：…"; the eval prompt states their real number), and an extractive summary
of one of them — its most salient
sentences (Luhn, "The Automatic Creation of Literature Abstracts", 1958: sentences scored by the
paragraph's frequent content words) — as the abstract to locate. LongBench's own abstracts are
LLM-written; an extractive one is easier, so compare numbers only within the same data.

Paragraphs are the corpus's blank-line blocks of ``min_words``–``max_words`` words; a longer block
(text whose paragraph breaks were lost, as in the shared essays) is cut into runs of whole sentences
of at most ``max_words`` words. ``length`` is counted as LongBench counts it: words (CJK characters
for Chinese) of ``input`` plus ``context``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data_builders.corpus import clean_text, iter_raw_documents, split_sentences
from data_builders.text import count_words, detect_lang
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, atomic_write_text

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]{3,}|[\u4e00-\u9fff]")
_STOP = set(
    "that this with have from they were their there which would what when about into more "
    "than them then these some also only just very been your will other like because could".split()
)


class Options(BaseModel):
    """Flags of ``longqa build-data --task passage-retrieval``."""

    model_config = ConfigDict(extra="forbid")
    corpus: Path = Field(description="folder of .txt/.md files, or JSONL with a text field")
    out: Path = Field(description="output folder (JSONL + stats.json)")
    field: str = "text"
    lang: Literal["auto", "en", "zh"] = "auto"
    num_samples: int = Field(50, ge=1)
    num_paragraphs: int = Field(30, ge=2, description="paragraphs per sample (LongBench: 30)")
    summary_sentences: int = Field(2, ge=1, description="sentences in the extractive abstract")
    min_words: int = Field(40, ge=1, description="shortest paragraph (words, or CJK characters)")
    max_words: int = Field(300, ge=1, description="longest paragraph (LongBench's average: ~300)")
    seed: int = 0


def paragraphs(text: str, min_words: int, max_words: int) -> list[str]:
    """Paragraphs of ``text`` with ``min_words``–``max_words`` words and at least two sentences:
    blank-line blocks, longer blocks cut into consecutive whole sentences of at most ``max_words``."""
    out = []
    for block in clean_text(text).split("\n\n"):
        block = " ".join(block.split("\n")).strip()
        if count_words(block) <= max_words:
            chunks = [block]
        else:
            chunks, current, words = [], [], 0
            for sent in split_sentences(block):
                n = count_words(sent)
                if current and words + n > max_words:
                    chunks.append(" ".join(current))
                    current, words = [], 0
                current.append(sent)
                words += n
            chunks.append(" ".join(current))
        for para in chunks:
            n = count_words(para)
            if min_words <= n <= max_words and len(split_sentences(para)) >= 2:
                out.append(para)
    return out


def extractive_summary(paragraph: str, k: int) -> str:
    """The ``k`` most salient sentences of ``paragraph`` (Luhn scoring), in their original order."""
    sentences = split_sentences(paragraph)
    words = [w.lower() for w in _WORD.findall(paragraph) if w.lower() not in _STOP]
    freq = Counter(words)

    def salience(sent: str) -> float:
        toks = [w.lower() for w in _WORD.findall(sent) if w.lower() not in _STOP]
        return sum(freq[t] for t in toks) / (len(toks) + 5) if toks else 0.0

    ranked = sorted(range(len(sentences)), key=lambda i: (-salience(sentences[i]), i))[:k]
    return " ".join(sentences[i] for i in sorted(ranked))


def _label(lang: str, i: int) -> str:
    return f"段落{i}" if lang == "zh" else f"Paragraph {i}"


def make_sample(paras: list[str], target: int, lang: str, k: int, name: str) -> dict[str, Any]:
    """One LongBench row: numbered paragraphs and the abstract of ``paras[target]``."""
    sep = "：" if lang == "zh" else ": "
    context = "\n\n".join(f"{_label(lang, i + 1)}{sep}{p}" for i, p in enumerate(paras))
    abstract = extractive_summary(paras[target], k)
    digest = hashlib.sha1((context + abstract).encode("utf-8")).hexdigest()[:24]
    return {
        "input": abstract,
        "context": context,
        "answers": [_label(lang, target + 1)],
        "length": count_words(abstract) + count_words(context),
        "dataset": name,
        "language": lang,
        "all_classes": None,
        "_id": digest,
    }


def build(options: Options) -> dict[str, Any]:
    """Write ``passage_retrieval_<lang>.jsonl`` + ``stats.json`` under ``options.out``."""
    pool: list[str] = []
    for _, raw in iter_raw_documents(options.corpus, field=options.field):
        pool.extend(paragraphs(raw, options.min_words, options.max_words))
    pool = list(dict.fromkeys(pool))  # drop duplicate paragraphs
    if len(pool) < options.num_paragraphs:
        raise LongqaError(
            f"{options.corpus}: only {len(pool)} paragraphs of {options.min_words}-"
            f"{options.max_words} words; need {options.num_paragraphs} (--num-paragraphs)"
        )
    lang = options.lang if options.lang != "auto" else detect_lang("\n".join(pool[:50]))
    name = f"passage_retrieval_{lang}"
    rng = random.Random(options.seed)
    rows = []
    for _ in range(options.num_samples):
        paras = rng.sample(pool, options.num_paragraphs)
        rows.append(
            make_sample(paras, rng.randrange(len(paras)), lang, options.summary_sentences, name)
        )
    out = Path(options.out)
    path = out / f"{name}.jsonl"
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    stats = {
        "task": "passage-retrieval",
        "file": str(path),
        "samples": len(rows),
        "paragraph_pool": len(pool),
        "paragraphs_per_sample": options.num_paragraphs,
        "lang": lang,
        "mean_length_words": sum(r["length"] for r in rows) / len(rows),
    }
    atomic_write_json(out / "stats.json", stats)
    return stats
