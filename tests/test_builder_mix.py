"""mix: format conversion, counts/ratios, seeded determinism, and a card that matches the file."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from builder_texts import en_paper, paragraphs, zh_paper

from data_builders.mix import Options, apportion, build, convert
from longqa.core.errors import LongqaError
from longqa.data.schema import read_samples


def test_convert_formats():
    share = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    sample, fmt = convert(share, "chat")
    assert fmt == "sharegpt" and [m["role"] for m in sample["messages"]] == ["user", "assistant"]
    alpaca = {"instruction": "把这句话翻译成英文。", "input": "你好", "output": "Hello"}
    sample, fmt = convert(alpaca, "short")
    assert fmt == "alpaca" and sample["lang"] == "zh"
    assert sample["messages"][0]["content"] == "把这句话翻译成英文。\n\n你好"
    assert convert({"conversations": [{"from": "alien", "value": "?"}]}, "x") == (
        None,
        "unknown_role",
    )
    assert convert({"conversations": [{"from": "human", "value": "Q"}]}, "x") == (None, "no_answer")
    assert convert({"foo": 1}, "x") == (None, "unknown_format")
    assert apportion(10, [0.5, 0.3, 0.2]) == [5, 3, 2] and sum(apportion(7, [1, 1, 1])) == 7


def _sources(tmp_path):
    # a builder's output (real paper-summary samples)
    from data_builders.paper_summary import Options as PSOptions
    from data_builders.paper_summary import build as ps_build

    papers = tmp_path / "papers"
    papers.mkdir()
    for i in range(6):
        text = en_paper(i)[0] if i % 2 else zh_paper(i)[0]
        (papers / f"p{i}.md").write_text(text, encoding="utf-8")
    ps_build(PSOptions(input=papers, out=tmp_path / "psum", tokenizer="approx"))
    # ShareGPT-style long conversations (en + zh) with malformed records
    convs = []
    for i, para in enumerate(paragraphs("en", 5, 1) + paragraphs("zh", 3, 2)):
        convs.append(
            {
                "id": f"c{i}",
                "conversations": [
                    {"from": "human", "value": f"Tell me about this: {para}"},
                    {"from": "gpt", "value": para},
                    {"from": "human", "value": "Thanks!"},
                ],
            }
        )
    convs.append({"conversations": [{"from": "robot", "value": "beep"}]})
    convs.append({"conversations": [{"from": "human", "value": "unanswered"}]})
    lines = [json.dumps(c, ensure_ascii=False) for c in convs] + ["{broken"]
    (tmp_path / "sharegpt.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Alpaca-style short instructions as a JSON array, one without an output
    alpaca = [{"instruction": f"Summarise: {p}", "input": "", "output": p[:80]} for p in
              paragraphs("en", 4, 3)]  # fmt: skip
    alpaca += [{"instruction": "请总结：" + p, "output": p[:30]} for p in paragraphs("zh", 2, 4)]
    alpaca.append({"instruction": "No output here"})
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("")
    return [
        f"papers={tmp_path / 'psum'}",
        f"chat={tmp_path / 'sharegpt.jsonl'}",
        str(tmp_path / "alpaca.json"),
        f"nothing={tmp_path / 'empty.jsonl'}",
    ]


def _card_table(card: str, heading: str) -> dict[str, list[str]]:
    section = card.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r][1:]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_mix_counts_deterministic_and_card_matches(tmp_path):
    inputs = _sources(tmp_path)
    opts = dict(inputs=inputs, counts=[4, 6, 5, 0], seed=7)
    stats = build(Options(out=tmp_path / "m1", **opts))
    build(Options(out=tmp_path / "m2", **opts))
    other = build(Options(out=tmp_path / "m3", **{**opts, "seed": 8}))
    files = [sorted((tmp_path / m).glob("*.jsonl")) for m in ("m1", "m2", "m3")]
    text = [b"".join(f.read_bytes() for f in fs) for fs in files]
    assert text[0] == text[1] and text[0] != text[2]  # same seed → same bytes
    assert other["samples"] == stats["samples"] == 15

    samples = list(read_samples(tmp_path / "m1"))
    ids = [s.id for s in samples]
    assert len(set(ids)) == 15
    by_source = Counter(s.meta["mix_source"] for s in samples)
    assert by_source == {"papers": 4, "chat": 6, "alpaca": 5}
    assert ids != sorted(ids, key=lambda i: i.split("-")[0])  # shuffled across sources
    chat = [s for s in samples if s.meta["mix_source"] == "chat"]
    assert all(s.messages[-1].role == "assistant" for s in chat)  # trailing "Thanks!" dropped

    card = (tmp_path / "m1" / "README.md").read_text(encoding="utf-8")
    sources = _card_table(card, "Sources")
    assert {k: int(v[3]) for k, v in sources.items()} == {
        "papers": 4,
        "chat": 6,
        "alpaca": 5,
        "nothing": 0,
    }
    assert "unknown_role 1" in sources["chat"][4] and "bad_line 1" in sources["chat"][4]
    assert "bad_alpaca 1" in sources["alpaca"][4]
    assert "empty files 1" in sources["nothing"][4]
    langs = {k: int(v[0]) for k, v in _card_table(card, "Languages").items()}
    assert langs == Counter(s.lang for s in samples)
    tasks = {k: int(v[0]) for k, v in _card_table(card, "Tasks").items()}
    assert tasks == Counter(s.task for s in samples)
    lengths = _card_table(card, "Lengths")
    assert sum(int(v[0]) for v in lengths.values()) == 15
    assert re.search(r"\*\*15 samples\*\*", card)


def test_mix_ratios_total_and_limits(tmp_path):
    inputs = _sources(tmp_path)[:3]
    stats = build(Options(inputs=inputs, out=tmp_path / "r", ratios="0.5,0.25,0.25", total=8))
    assert [s["selected"] for s in stats["sources"]] == [4, 2, 2]
    # no total: the largest mixture that needs no repeats (papers has 6 usable → 12 in all)
    stats = build(Options(inputs=inputs, out=tmp_path / "r2", ratios=[0.5, 0.25, 0.25]))
    assert stats["samples"] == 12
    with pytest.raises(LongqaError, match="source 'chat' has 8 usable records but 20"):
        build(Options(inputs=inputs, out=tmp_path / "r3", counts=[1, 20, 1]))
    stats = build(Options(inputs=inputs, out=tmp_path / "r4", counts=[1, 20, 1], replace=True))
    ids = [s.id for s in read_samples(tmp_path / "r4")]
    assert len(ids) == len(set(ids)) == 22
    chat_ids = [i for i in ids if i.startswith("chat-")]
    assert len({i.split("-r")[0] for i in chat_ids}) == 8  # every record at least twice
    with pytest.raises(ValueError, match="3 inputs"):
        Options(inputs=inputs, out=tmp_path / "x", counts=[1, 2])
