"""paper-qa: random passage picking, offline extractive QA, LLM QA against a stub server."""

from __future__ import annotations

import json
import random
import re

import pytest
from builder_texts import en_paper, prose, zh_paper
from stub_openai_server import StubOpenAIServer, StubReply

from data_builders.corpus import clean_text
from data_builders.paper_qa import Options, build, pick_passage
from data_builders.text import count_words
from data_builders.verify import verify_quote
from longqa.data.schema import read_samples


@pytest.mark.parametrize("lang,limit", [("en", 120), ("zh", 300)])
def test_pick_passage_bounded_consecutive_paragraphs(lang, limit):
    text = prose(lang, 30, 3)
    paras = text.split("\n\n")
    starts = set()
    for seed in range(20):
        passage, start = pick_passage(text, limit, random.Random(seed))
        assert 0 < count_words(passage) <= limit
        got = passage.split("\n\n")
        assert got == paras[start : start + len(got)]  # whole, consecutive paragraphs
        starts.add(start)
    assert len(starts) > 3  # really random
    assert pick_passage(text, limit, random.Random(1)) == pick_passage(
        text, limit, random.Random(1)
    )
    assert pick_passage("Short text.", limit, random.Random(0)) == ("Short text.", 0)


def _papers(folder):
    folder.mkdir()
    (folder / "en.md").write_text(en_paper(1, sections=5)[0], encoding="utf-8")
    (folder / "zh.md").write_text(zh_paper(2, sections=5)[0], encoding="utf-8")
    (folder / "empty.txt").write_text("   \n")
    (folder / "tiny.txt").write_text("A note of nine words, far too short here.")
    return folder


@pytest.mark.parametrize("style", ["plain", "quote-first"])
def test_extractive_whole_paper_plus_question(tmp_path, style):
    src = _papers(tmp_path / "papers")
    opts = dict(input=src, generator="extractive", tokenizer="approx", max_passage_words=150)
    stats = build(Options(out=tmp_path / "out", answer_style=style, **opts))
    samples = {s.id: s for s in read_samples(tmp_path / "out")}
    assert set(samples) == {"pqa-en-0", "pqa-zh-0"}
    assert stats["skipped"] == {"empty": 1, "too_short": 1} and stats["papers"] == 4
    for sid, lang in (("pqa-en-0", "en"), ("pqa-zh-0", "zh")):
        s = samples[sid]
        paper = clean_text((src / f"{lang}.md").read_text(encoding="utf-8"))
        user, answer = s.messages[1].content, s.messages[2].content
        assert s.lang == lang and user.startswith(paper)  # the WHOLE paper, then the question
        question = user.rsplit("\n\n", 1)[1]
        assert question.startswith("Question: " if lang == "en" else "问题：")
        quote = s.meta["original_text"]
        assert verify_quote(quote, paper).kind == "exact"
        prefix = re.search(r"[\"“](.+?)[\"”]", question).group(1)
        assert quote.startswith(prefix) and paper.count(prefix) == 1  # unambiguous question
        assert quote[len(prefix) :].strip() in answer
        if style == "quote-first":
            assert answer.index(quote) < answer.index(quote[len(prefix) :].strip(), len(quote))
        else:
            assert quote not in answer
    # deterministic for the seed
    build(Options(out=tmp_path / "again", answer_style=style, **opts))
    a = sorted((tmp_path / "out").glob("*.jsonl"))[0].read_text()
    b = sorted((tmp_path / "again").glob("*.jsonl"))[0].read_text()
    assert a == b


_SEEN: dict[str, int] = {}


def _responder(body, n):
    prompt = body["messages"][-1]["content"]
    passage = re.search(r"<passage>\n(.*?)\n</passage>", prompt, re.S).group(1)
    _SEEN[passage] = _SEEN.get(passage, 0) + 1
    if "HARB-1" in passage and _SEEN[passage] <= 2:  # the first two answers are broken JSON
        return StubReply(content='{"question": "What?", "original_text": "unterminated')
    sentence = re.split(r"(?<=[.。])\s*", passage)[0]
    if "本文提出了第2号" in passage:
        sentence = "这句话是编造的，并不在论文里。"  # a fabricated quote: always rejected
    obj = {"question": "Which ledger?", "original_text": sentence, "answer": "The one in Antwerp."}
    return StubReply(content="Here you go:\n```json\n" + json.dumps(obj) + "\n```")


def test_llm_generator_quote_first_with_stub_server(tmp_path):
    src = _papers(tmp_path / "papers")
    opts = Options(
        input=src,
        out=tmp_path / "out",
        generator="llm",
        model="stub",
        answer_style="quote-first",
        tokenizer="approx",
        max_passage_words=100000,  # the whole paper is the passage: abstracts are in it
        max_attempts=3,
    )
    with StubOpenAIServer(_responder) as server:
        opts.base_url = server.url
        stats = build(opts)
        calls = server.request_count
        again = build(opts)  # resume: nothing new to ask, nothing written twice
        assert server.request_count == calls
    (sample,) = read_samples(tmp_path / "out")
    assert sample.id == "pqa-en-0" and sample.messages[-1].content.endswith("The one in Antwerp.")
    assert sample.messages[-1].content.startswith('The relevant original text is: "# A Study')
    assert stats["rejected"] == {"invalid JSON": 2, "quote not in passage": 3}
    assert stats["skipped"] == {"dropped": 1, "empty": 1, "too_short": 1}
    assert calls == 2 + 1 + 3 and stats["llm_usage"]["calls"] == calls
    assert again["already_done"] == 1 and again["samples"] == 1
    assert again["written_this_run"] == 0 and stats["written_this_run"] == 1


def test_llm_generator_needs_model(tmp_path):
    from longqa.core.errors import LongqaError

    with pytest.raises(LongqaError, match="--model"):
        build(Options(input=_papers(tmp_path / "p"), out=tmp_path / "o", generator="llm"))
