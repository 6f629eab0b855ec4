"""paraphrase-mdqa: ``--num-samples`` is a target met by drawing further groups, within a bound."""

from __future__ import annotations

import sys
from pathlib import Path

from data_builders.paraphrase_mdqa import build
from longqa.data.schema import read_samples

sys.path.insert(0, str(Path(__file__).parent))
from stub_openai_server import QAResponder, StubOpenAIServer  # noqa: E402
from test_paraphrase_mdqa import base_opts, check_samples, make_corpus, mark, relevant_docs  # noqa: E402


def _setup(tmp_path: Path, **kw):
    corpus = make_corpus(tmp_path / "corpus", n=96)  # 12 distinct groups of 8: no wrap-around
    opts = base_opts(corpus, tmp_path / "out", generator="llm", model="stub", concurrency=4, **kw)
    for i in (1, 3):  # every relevant document of samples 1 and 3 yields only made-up quotes
        for doc in relevant_docs(opts.model_copy(update={"num_samples": 4}))[i]:
            mark(doc, "FABRICATE")
    return opts


def test_rejected_groups_are_replaced_until_the_target_is_met(tmp_path: Path):
    opts = _setup(tmp_path)
    with StubOpenAIServer(QAResponder(), max_requests=300) as server:
        stats = build(opts.model_copy(update={"base_url": server.url}))
    ids = sorted(s.id for s in read_samples(tmp_path / "out"))
    # exactly the first six accepted ids, whatever the concurrency: 1 and 3 dropped, 6 and 7 drawn
    assert ids == [f"pmdqa-{i:06d}" for i in (0, 2, 4, 5, 6, 7)]
    assert stats["samples"] == 6 and stats["shortfall"] == 0 and stats["dropped_samples"] == 2
    assert stats["drop_reasons"] == {"too few valid turns": 2}
    assert stats["dropped_turns"] == {"quote not in document": 4}
    assert stats["rejections"] == {"quote not in document": 4 * opts.max_attempts}
    assert stats["draws"] == {"used": 8, "limit": 2 * 6 + 8}
    check_samples(tmp_path / "out", opts)


def test_shortfall_is_reported_and_a_rerun_with_more_draws_completes(tmp_path: Path, capsys):
    opts = _setup(tmp_path, max_draws=7)
    with StubOpenAIServer(QAResponder(), max_requests=300) as server:
        stats = build(opts.model_copy(update={"base_url": server.url}))
        first = server.request_count
    assert stats["samples"] == 5 and stats["shortfall"] == 1
    assert stats["draws"] == {"used": 7, "limit": 7}
    assert "5 of 6 samples after 7 draws" in capsys.readouterr().err
    with StubOpenAIServer(QAResponder(), max_requests=300) as server:
        stats = build(opts.model_copy(update={"base_url": server.url, "max_draws": None}))
        # only sample 7 is new: 2 turns, nothing asked again for the ids already decided
        assert server.request_count == 2 and first == 5 * 2 + 2 * 2 * opts.max_attempts
    assert stats["samples"] == 6 and stats["shortfall"] == 0
    assert len({s.id for s in read_samples(tmp_path / "out")}) == 6
