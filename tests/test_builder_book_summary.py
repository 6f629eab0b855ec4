"""book-summary: chapter splitting, cutting long books at chapter boundaries, malformed books."""

from __future__ import annotations

import json

from builder_texts import paragraphs, prose

from data_builders.book_summary import Options, build, split_chapters
from longqa.data.schema import read_samples
from longqa.data.tokens import get_token_counter


def test_split_chapters_english_chinese_markdown_and_none():
    front, chs = split_chapters(
        "MOBY\nby H.\n\nChapter 1. Loomings\nCall me.\n\nCHAPTER II\nThe bag."
    )
    assert front == "MOBY\nby H."
    assert chs == [("Chapter 1. Loomings", "Call me."), ("CHAPTER II", "The bag.")]
    _, zh = split_chapters("第一章 开始\n很久以前。\n\n第十二章 结束\n完了。")
    assert [t for t, _ in zh] == ["第一章 开始", "第十二章 结束"]
    _, md = split_chapters("# Part One\n\n## Chapter 1\nhi\n\n## Chapter 2\nbye")
    assert md == [("Part One\n\nChapter 1", "hi"), ("Chapter 2", "bye")]
    assert split_chapters("No markers, just text.") == ("", [("", "No markers, just text.")])
    # "chapter" inside a sentence is not a marker
    assert len(split_chapters("In this chapter 3 things happen.\nMore.")[1]) == 1


def _book(lang: str, n: int, per_chapter: int, seed: int) -> str:
    title = "第{}章 旅程" if lang == "zh" else "Chapter {}: The Journey"
    nums = "一二三四五六七八九十"
    parts = ["THE HARBOUR" if lang == "en" else "港口"]
    for i in range(n):
        label = nums[i] if lang == "zh" else str(i + 1)
        parts += [title.format(label), prose(lang, per_chapter, seed + i)]
    return "\n\n".join(parts)


def test_build_books_paired_files_jsonl_and_malformed(tmp_path):
    src = tmp_path / "books"
    src.mkdir()
    summary_en = " ".join(paragraphs("en", 1, 99))
    (src / "harbour.txt").write_text(_book("en", 3, 2, 1), encoding="utf-8")
    (src / "harbour.summary.txt").write_text(summary_en, encoding="utf-8")
    # Chinese book whose summary file has the same chapter markers → chapter summaries
    (src / "gang.txt").write_text(_book("zh", 3, 2, 5), encoding="utf-8")
    ch_sums = [paragraphs("zh", 1, 50 + i, per=2)[0] for i in range(3)]
    zh_summary = "\n\n".join(f"第{n}章\n{s}" for n, s in zip("一二三", ch_sums, strict=True))
    (src / "gang.summary.md").write_text(zh_summary, encoding="utf-8")
    # malformed: no chapter markers (short: kept), no markers and too long, empty, no summary
    (src / "plain.txt").write_text(prose("en", 3, 7), encoding="utf-8")
    (src / "plain.summary.txt").write_text("A short tale of a harbour and its keeper.")
    (src / "huge.txt").write_text(prose("en", 80, 8), encoding="utf-8")
    (src / "huge.summary.txt").write_text("An enormous chronicle.")
    (src / "empty.txt").write_text("")
    (src / "empty.summary.txt").write_text("Nothing.")
    (src / "orphan.txt").write_text(_book("en", 2, 1, 9))
    # JSONL: a long book with chapter summaries, cut into windows; plus a broken line
    chapters = [{"title": f"Chapter {i + 1}", "text": prose("en", 6, 20 + i)} for i in range(6)]
    rec = {
        "id": "long-one",
        "chapters": chapters,
        "chapter_summaries": [f"Summary of part {i + 1}." for i in range(6)],
    }
    (src / "more.jsonl").write_text(json.dumps(rec) + "\n{not json\n", encoding="utf-8")

    target = 1200
    stats = build(
        Options(input=src, out=tmp_path / "out", target_tokens=target, tokenizer="approx")
    )
    samples = {s.id: s for s in read_samples(tmp_path / "out")}
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats

    en = samples["book-harbour-000"]
    assert en.lang == "en" and en.messages[-1].content == summary_en
    assert (
        en.messages[1].content.startswith("THE HARBOUR") and "Chapter 3" in en.messages[1].content
    )
    zh = samples["book-gang-000"]
    assert zh.lang == "zh" and zh.meta["summary_kind"] == "chapters"
    assert zh.messages[-1].content.split("\n\n") == [
        f"第{n}章 旅程：{s}" for n, s in zip("一二三", ch_sums, strict=True)
    ]
    assert "book-plain-000" in samples and stats["no_chapter_markers"] == 2

    windows = [s for s in samples.values() if s.meta["book_id"] == "long-one"]
    assert len(windows) > 1
    counter = get_token_counter("approx")
    covered = []
    for s in sorted(windows, key=lambda s: s.meta["chapters"][0]):
        lo, hi = s.meta["chapters"]
        covered += list(range(lo, hi))
        assert s.messages[-1].content.split("\n\n") == [
            f"Chapter {i + 1}: Summary of part {i + 1}." for i in range(lo, hi)
        ]
        n = sum(counter.count(m.content) for m in s.messages)
        assert n <= target, n
    assert covered == list(range(6))  # consecutive, non-overlapping, nothing lost

    assert stats["skipped"] == {
        "bad_line": 1,
        "empty": 1,
        "missing_summary": 1,
        "no_chapter_markers_too_long": 1,
    }
    assert stats["samples"] == len(samples) == 3 + len(windows)
    assert stats["languages"] == {"en": 2 + len(windows), "zh": 1}


def test_overlong_whole_summary_skip_or_truncate(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "b", "text": _book("en", 5, 5, 3), "summary": "All of it."}))
    stats = build(Options(input=src, out=tmp_path / "a", target_tokens=900, tokenizer="approx"))
    assert stats["samples"] == 0 and stats["skipped"] == {"overlong_whole_summary": 1}
    stats = build(
        Options(
            input=src,
            out=tmp_path / "b",
            target_tokens=900,
            tokenizer="approx",
            overlong="truncate",
        )
    )
    (sample,) = read_samples(tmp_path / "b")
    assert stats["truncated"] == 1 and sample.meta["truncated"] is True
    assert sample.meta["chapters"][0] == 0 and sample.meta["chapters"][1] < 5


def test_chapter_summary_count_mismatch_and_chinese_without_markers(tmp_path):
    rows = [
        # 3 chapters but 2 chapter summaries: falls back to the whole summary
        {
            "id": "m1",
            "text": _book("en", 3, 1, 4),
            "chapter_summaries": ["a", "b"],
            "summary": "S.",
        },
        # the same without a whole summary: skipped and counted
        {"id": "m2", "text": _book("en", 3, 1, 4), "chapter_summaries": ["a", "b"]},
        # Chinese book without chapter markers, short enough: kept whole
        {"id": "z", "text": prose("zh", 3, 6), "summary": "一个关于港口的故事。"},
    ]
    src = tmp_path / "b.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    stats = build(Options(input=src, out=tmp_path / "o", tokenizer="approx"))
    samples = {s.id: s for s in read_samples(tmp_path / "o")}
    assert samples["book-m1-000"].messages[-1].content == "S."
    assert samples["book-z-000"].lang == "zh" and samples["book-z-000"].meta["n_chapters"] == 1
    assert samples["book-z-000"].messages[1].content.endswith("请为以上书籍写一篇摘要。")
    assert stats["skipped"] == {"chapter_count_mismatch": 1}  # m2
    assert stats["chapter_summaries_ignored"] == 1  # m1: recovered with its whole summary
    assert stats["samples"] == 2 and stats["no_chapter_markers"] == 1
