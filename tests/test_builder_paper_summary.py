"""paper-summary: abstract found and REMOVED from the body; malformed papers counted."""

from __future__ import annotations

import json
import re

from builder_texts import en_paper, prose, zh_paper

from data_builders.paper_summary import Options, build, split_abstract
from longqa.data.schema import read_samples


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_split_abstract_forms():
    md = "# T\n\n## Abstract\n\nWe study A.\n\nAnd B.\n\n## 1 Introduction\n\nIntro."
    assert split_abstract(md) == ("We study A.\n\nAnd B.", "# T\n\n## 1 Introduction\n\nIntro.")
    inline = "Title\nAbstract: We present X. It works.\n\n1 Introduction\nText."
    assert split_abstract(inline) == ("We present X. It works.", "Title\n\n1 Introduction\nText.")
    zh = "标题\n\n摘要：本文研究长文本。\n\n关键词：长文本\n\n一、引言\n正文。"
    assert split_abstract(zh) == ("本文研究长文本。", "标题\n\n关键词：长文本\n\n一、引言\n正文。")
    no_heading_after = "T\n\nABSTRACT\nShort abstract.\n\nBody text."
    assert split_abstract(no_heading_after) == ("Short abstract.", "T\n\nBody text.")
    assert split_abstract("Title\n\n1 Introduction\nNo abstract at all.") is None


def test_build_papers_en_zh_jsonl_and_malformed(tmp_path):
    src = tmp_path / "papers"
    src.mkdir()
    en_text, en_abs = en_paper(1)
    zh_text, zh_abs = zh_paper(2)
    (src / "en.md").write_text(en_text, encoding="utf-8")
    (src / "zh.txt").write_text(zh_text, encoding="utf-8")
    (src / "noabs.md").write_text(en_paper(3, abstract=False)[0], encoding="utf-8")
    (src / "empty.md").write_text("", encoding="utf-8")
    # JSONL: abstract given separately AND repeated inside the body → must be removed from it
    body, abs_j = en_paper(4)
    rows = [
        {"id": "j1", "text": body, "abstract": abs_j},
        {"id": "j2", "text": "Tiny paper.\n\nAbstract: " + prose("en", 1, 5)},  # body too short
        "not an object",
    ]
    (src / "more.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n",
        encoding="utf-8",
    )
    stats = build(Options(input=src, out=tmp_path / "out", tokenizer="approx"))
    samples = {s.id: s for s in read_samples(tmp_path / "out")}
    assert set(samples) == {"psum-en", "psum-zh", "psum-j1"}
    for sid, abstract in (("psum-en", en_abs), ("psum-zh", zh_abs), ("psum-j1", abs_j)):
        s = samples[sid]
        user = s.messages[1].content
        assert s.messages[-1].content == abstract
        assert _squash(abstract) not in _squash(user)  # the abstract is removed from the body
        assert not any(
            sent.strip() and sent.strip() in user for sent in re.split(r"(?<=[.。])", abstract)
        )
    assert samples["psum-zh"].lang == "zh" and samples["psum-en"].lang == "en"
    assert "## 1 Introduction" in samples["psum-en"].messages[1].content
    assert samples["psum-zh"].messages[1].content.endswith("请为以上论文撰写摘要。")
    assert stats["skipped"] == {
        "bad_line": 2,
        "body_too_short": 1,
        "empty": 1,
        "no_abstract": 1,
    }
    assert stats["papers"] == 6 and stats["samples"] == 3
    assert stats["languages"] == {"en": 2, "zh": 1}


def test_too_long_and_strict(tmp_path):
    src = tmp_path / "p.md"
    src.write_text(en_paper(1, sections=5)[0])
    stats = build(Options(input=src, out=tmp_path / "o", tokenizer="approx", target_tokens=100))
    assert stats["samples"] == 0 and stats["skipped"] == {"too_long": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{oops\n')
    import pytest

    from longqa.core.errors import LongqaError

    with pytest.raises(LongqaError, match=r"bad\.jsonl:2"):
        build(Options(input=bad, out=tmp_path / "o2", tokenizer="approx", strict=True))
