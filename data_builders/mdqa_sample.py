"""One paraphrase-mdqa sample: question turns, document layout at controlled depths, rendering.

Used by :mod:`data_builders.paraphrase_mdqa`; see its docstring for the recipe. The pieces:

- :func:`llm_turn` / :func:`extractive_turn` write one question turn about one document (LLM JSON
  answer with quote verification and regeneration, or an offline salient-span question);
- :func:`layout` picks distractors to fill the token budget and places each relevant document so
  its relative depth (tokens before it / tokens of the other documents) hits a target;
- :func:`render` turns the layout and turns into chat messages in the sample's language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from data_builders.corpus import Document
from data_builders.extractive import choice_words, keywords, pick_salient_span, unique_prefix
from data_builders.verify import verify_quote
from longqa.data.llm import LLMClient, LLMError, parse_json_object
from longqa.data.response_format import object_schema
from longqa.eval.attribution import normalize_words, shares_span

PROMPTS = Path(__file__).parent / "prompts"
QA_KEYS = ("question", "original_text", "answer")
QA_SCHEMA = object_schema(QA_KEYS, name="qa")  # sent as response_format where the server takes it


@cache
def prompts(lang: str) -> dict[str, Template]:
    """The text templates of ``data_builders/prompts/<lang>/`` (``$name`` placeholders)."""
    folder = PROMPTS / lang
    return {p.stem: Template(p.read_text(encoding="utf-8").strip()) for p in folder.glob("*.txt")}


@dataclass
class Turn:
    doc: Document
    negative: bool
    question: str = ""
    quote: str = ""  # verbatim span of doc.text ("" for negatives)
    answer: str = ""  # the LLM's answer part (positives, LLM generator)
    match: str = ""  # "exact" / "fuzzy" / "" (negatives, extractive: always exact)
    ratio: float = 1.0
    attempts: int = 0
    rejections: list[str] = field(default_factory=list)
    failed: str | None = None  # reason when the turn could not be made
    span: str = ""  # extractive: the chosen span (question hint is fixed at render time)
    target_depth: float | None = None
    choices: list[str] = field(default_factory=list)  # extractive choice question: the options


async def llm_turn(client: LLMClient, doc: Document, negative: bool, lang: str, opts: Any) -> Turn:
    """Ask the LLM for ``{question, original_text, answer}`` about ``doc``; verify, regenerate."""
    turn = Turn(doc, negative)
    msgs = [{"role": "user", "content": prompts(lang)["qa_request"].substitute(document=doc.text)}]
    for attempt in range(opts.max_attempts):
        turn.attempts = attempt + 1
        try:
            reply = await client.acomplete(
                msgs,
                temperature=opts.temperature,
                max_tokens=opts.max_new_tokens,
                json_mode=True,
                schema=QA_SCHEMA,
                seed=opts.seed + attempt,
            )
        except LLMError:
            turn.rejections.append("llm request failed")
            continue
        obj, reason = parse_json_object(reply.text, QA_KEYS)
        if obj is None:
            turn.rejections.append(f"bad answer: {reason}")
            continue
        turn.question, turn.answer = obj["question"].strip(), obj["answer"].strip()
        if negative:
            return turn
        if len(obj["original_text"].strip()) < opts.min_quote_chars:
            turn.rejections.append("quote too short")
            continue
        m = verify_quote(obj["original_text"], doc.text, opts.quote_threshold)
        if not m.ok:
            turn.rejections.append("quote not in document")
            continue
        turn.quote, turn.match, turn.ratio = m.text, m.kind, m.ratio
        return turn
    turn.failed = turn.rejections[-1] if turn.rejections else "no attempts"
    return turn


def extractive_turn(doc: Document, negative: bool, lang: str, rng: random.Random) -> Turn:
    """Pick a salient span of ``doc``; the question text is fixed by :func:`render`."""
    turn = Turn(doc, negative, attempts=1, match="exact")
    span = pick_salient_span(doc.text, rng, lang=lang)
    if span is None:
        turn.failed = "no suitable sentence span"
    else:
        turn.span = span.text
        turn.quote = "" if negative else span.text
    return turn


def extractive_question(turn: Turn, others: list[str], lang: str, rng: random.Random) -> str | None:
    """A question hinting at the span by a prefix (or keywords) that no other document contains."""
    t = prompts(lang)
    prefix = unique_prefix(turn.span, others, lang=lang)
    if prefix is not None and (lang == "zh" or rng.random() < 0.7):
        lines = t["extractive_questions"].template.splitlines()
        return Template(rng.choice(lines)).substitute(prefix=prefix + "…")
    if lang != "zh":
        kws = keywords(turn.span, rng)
        if kws and not any(all(k in o for k in kws) for o in others):
            quoted = ", ".join(f'"{k}"' for k in kws[:-1]) + f' and "{kws[-1]}"'
            return t["extractive_keywords"].substitute(keywords=quoted)
    if prefix is not None:
        lines = t["extractive_questions"].template.splitlines()
        return Template(rng.choice(lines)).substitute(prefix=prefix + "…")
    return None


def extractive_choice_question(
    turn: Turn, others: list[str], lang: str, rng: random.Random
) -> str | None:
    """A question that asks for no answer form: which of four words the passage opening with a
    unique prefix uses. The right word comes from the rest of the span; the three others from the
    other documents and never from this one. Sets ``turn.answer`` (the word); None when no choice."""
    prefix = unique_prefix(turn.span, others, lang=lang)
    if prefix is None:
        return None
    if lang == "zh":
        rest = "".join(turn.span.split())[len(prefix) :]
    else:
        rest = " ".join(turn.span.split()[len(prefix.split()) :])
    shown = prefix.lower()
    right = [w for w in choice_words(rest, lang) if w.lower() not in shown]
    own = turn.doc.text.lower()
    wrong = sorted({w for o in others for w in choice_words(o, lang) if w.lower() not in own})
    if not right or len(wrong) < 3:
        return None
    turn.answer = rng.choice(right)
    options = [*rng.sample(wrong, 3), turn.answer]
    rng.shuffle(options)
    turn.choices = options
    if lang == "zh":
        choices = "、".join(f"“{w}”" for w in options[:-1]) + f"还是“{options[-1]}”"
    else:
        choices = ", ".join(f'"{w}"' for w in options[:-1]) + f' or "{options[-1]}"'
    return prompts(lang)["extractive_choice"].substitute(prefix=prefix + "…", choices=choices)


def scattered_choice_question(
    turn: Turn, others: list[str], lang: str, rng: random.Random, tries: int = 20
) -> str | None:
    """A choice question that names the passage by ``SCATTER_K`` keywords spread over the whole
    document (pairwise at least ``SCATTER_GAP`` words apart; a number or capitalised name first
    where it has one) whose combination no other document contains, never by a copied run: the
    question shares no run of ``NO_RUN`` words with the document (else None). The answer word
    comes from the quoted span, the three wrong ones from other documents (English only)."""
    if lang == "zh":
        return None
    words = turn.doc.text.split()
    keys = [w.strip(".,;:!?()\"'’“”") for w in words]
    right = [w for w in choice_words(turn.span, lang)]
    own = turn.doc.text.lower()
    wrong = sorted({w for o in others for w in choice_words(o, lang) if w.lower() not in own})
    if not right or len(wrong) < 3:
        return None
    answer = rng.choice(right)
    cands = [i for i, k in enumerate(keys) if k and k.lower() != answer.lower() and _salient(k, i)]
    other_words = [set(normalize_words(o)) for o in others]
    for _ in range(tries):
        order = rng.sample(cands, len(cands))
        order.sort(key=lambda i: not (keys[i][0].isdigit() or (keys[i][0].isupper() and i)))
        picked: list[int] = []
        for i in order:
            low = {keys[j].lower() for j in picked}
            if keys[i].lower() not in low and all(abs(i - j) >= SCATTER_GAP for j in picked):
                picked.append(i)
            if len(picked) == SCATTER_K:
                break
        if len(picked) < SCATTER_K:
            return None
        kws = [keys[i] for i in sorted(picked)]
        norm = [normalize_words(k) for k in kws]
        if any(all(set(n) <= ow for n in norm) for ow in other_words):
            continue  # another document has the same keywords: not a unique reference
        options = [*rng.sample(wrong, 3), answer]
        rng.shuffle(options)
        choices = ", ".join(f'"{w}"' for w in options[:-1]) + f' or "{options[-1]}"'
        quoted = ", ".join(f'"{k}"' for k in kws[:-1]) + f' and "{kws[-1]}"'
        question = prompts(lang)["extractive_choice_scattered"].substitute(
            keywords=quoted, choices=choices
        )
        if shares_span(question, turn.doc.text, NO_RUN):
            continue
        turn.answer, turn.choices = answer, options
        return question
    return None


SCATTER_K, SCATTER_GAP, NO_RUN = 3, 3, 5


def _salient(word: str, position: int) -> bool:
    """A keyword worth naming: a number, a capitalised word past the start, or a long word."""
    low = word.lower()
    if "'" in word or low in _SCATTER_STOP:
        return False
    return word[0].isdigit() or (word[0].isupper() and position > 0) or len(word) >= 6


_SCATTER_STOP = set(
    "because before between should through without something anything everything people "
    "another really actually always either itself others whether rather however".split()
)


def layout(
    relevant: list[Turn],
    pool: list[Document],
    budget: int,
    doc_overhead: int,
    rng: random.Random,
) -> list[Document]:
    """Relevant docs (at their target depths) + random distractors filling ``budget`` tokens.

    Distractors are taken in random order and skipped when they would overflow the budget — the
    paper's "randomly remove irrelevant documents until the target length".
    """
    used = sum(t.doc.n_tokens + doc_overhead for t in relevant)
    chosen: list[Document] = []
    for doc in rng.sample(pool, len(pool)):
        need = doc.n_tokens + doc_overhead
        if used + need <= budget:
            chosen.append(doc)
            used += need
    return place(relevant, chosen)


def place(relevant: list[Turn], distractors: list[Document]) -> list[Document]:
    """Insert each relevant doc where the tokens before it are closest to its target depth."""
    total = sum(d.n_tokens for d in distractors) + sum(t.doc.n_tokens for t in relevant)
    pending = sorted(relevant, key=lambda t: t.target_depth or 0.0)
    out: list[Document] = []
    prefix = 0
    for d in distractors:
        while pending:
            t = pending[0]
            target = (t.target_depth or 0.0) * (total - t.doc.n_tokens)
            if abs(prefix - target) <= abs(prefix + d.n_tokens - target):
                out.append(t.doc)
                prefix += t.doc.n_tokens
                pending.pop(0)
            else:
                break
        out.append(d)
        prefix += d.n_tokens
    out.extend(t.doc for t in pending)
    return out


def depths(docs: list[Document]) -> dict[str, float]:
    """Relative depth of every doc: tokens before it / tokens of all the other docs (0..1)."""
    total = sum(d.n_tokens for d in docs)
    out, prefix = {}, 0
    for d in docs:
        rest = total - d.n_tokens
        out[d.id] = round(prefix / rest, 4) if rest > 0 else 0.0
        prefix += d.n_tokens
    return out


def doc_spans(
    docs: list[Document], messages: list[dict[str, str]], lang: str
) -> dict[str, list[int]]:
    """``[start, end)`` of every document's text inside the first user message (for analysis)."""
    t = prompts(lang)
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    spans: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        block = t["document"].substitute(index=i + 1, text=d.text)
        at = first_user.find(block)
        if at < 0:
            raise ValueError(f"document {d.id} not found in the rendered prompt")
        start = at + block.index(d.text)
        spans[d.id] = [start, start + len(d.text)]
    return spans


def wrong_quote(turn: Turn, docs: list[Document]) -> str:
    """A span of a distractor as long (in words) as ``turn.quote``: the control that copies text
    without retrieving it. The distractor is the next document after the gold one in the layout
    (wrapping); the span starts at the same relative word offset as the true quote, so position
    and length match and only the source differs."""
    gold = next(k for k, d in enumerate(docs) if d.id == turn.doc.id)
    others = [docs[(gold + k) % len(docs)] for k in range(1, len(docs))]
    if not others or not turn.quote:
        raise ValueError(f"document {turn.doc.id}: no distractor or quote for a wrong-doc quote")
    n = len(turn.quote.split())
    long_enough = [d for d in others if len(d.text.split()) >= n]
    words = (long_enough[0] if long_enough else max(others, key=lambda d: len(d.text))).text.split()
    own, at = turn.doc.text.split(), turn.doc.text.find(turn.quote)
    rel = len(turn.doc.text[:at].split()) / (len(own) - n) if at > 0 and len(own) > n else 0.0
    start = round(min(1.0, rel) * max(0, len(words) - n))
    return " ".join(words[start : start + n])


def render(
    docs: list[Document],
    turns: list[Turn],
    lang: str,
    *,
    cite_index: bool,
    extractive: bool,
    plain: bool = False,
    form: str | None = None,
    neutral: bool = False,
) -> list[dict[str, str]]:
    """Chat messages: system, first user turn = numbered documents + question, then Q/A turns.

    ``plain`` answers leave the quote out (the same documents and questions, for comparisons).
    ``neutral``: the system prompt and instructions ask for no answer form, every turn carries an
    answer (extractive: the choice question's word), and ``form`` picks the answer alone: the
    paper's Figure 3 forms ``paraphrase`` (quote, then answer), ``index-detailed`` (document
    number, then answer) or ``detailed`` (answer only); ``wrong-quote`` quotes an equally long
    span of a distractor, then answers (a control: copying without retrieving)."""
    t = prompts(lang)
    index = {d.id: i + 1 for i, d in enumerate(docs)}
    body = "\n\n".join(t["document"].substitute(index=index[d.id], text=d.text) for d in docs)
    suffix = "_neutral" if neutral else ""
    context = t["context" + suffix].substitute(num_docs=len(docs), documents=body)
    messages = [{"role": "system", "content": t["system" + suffix].template}]
    quote_only = extractive and not neutral  # locate-and-quote questions: the quote is the answer
    plain = plain or form == "plain"
    for k, turn in enumerate(turns):
        user = f"{context}\n\n{turn.question}" if k == 0 else turn.question
        if turn.negative:
            answer = t["negative"].template
        elif form == "paraphrase-index":
            answer = t["answer_index_paraphrase"].substitute(
                index=index[turn.doc.id], quote=turn.quote, answer=turn.answer
            )
        elif form == "wrong-quote":
            answer = t["answer"].substitute(quote=wrong_quote(turn, docs), answer=turn.answer)
        elif form == "index-detailed":
            answer = t["answer_index_detailed"].substitute(
                index=index[turn.doc.id], answer=turn.answer
            )
        elif form == "detailed" or (plain and not quote_only):
            answer = t["plain_answer"].substitute(answer=turn.answer)
        elif plain:
            answer = t["extractive_plain_answer"].substitute(index=index[turn.doc.id])
        elif quote_only:
            answer = t["extractive_answer"].substitute(index=index[turn.doc.id], quote=turn.quote)
        elif cite_index:
            answer = t["answer_indexed"].substitute(
                index=index[turn.doc.id], quote=turn.quote, answer=turn.answer
            )
        else:
            answer = t["answer"].substitute(quote=turn.quote, answer=turn.answer)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages
