"""paraphrase-mdqa builder: LLM path on a stub server, resume after SIGKILL, extractive generator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_builders.corpus import read_corpus
from data_builders.paraphrase_mdqa import Options, SampleContext, build
from data_builders.verify import verify_quote
from longqa.cli.build_data import run_builder
from longqa.core.errors import LongqaError
from longqa.data.schema import read_samples
from longqa.data.tokens import get_token_counter

sys.path.insert(0, str(Path(__file__).parent))
from stub_openai_server import QAResponder, StubOpenAIServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ESSAYS = REPO.parent / "shared" / "corpora" / "paul_graham_essays"
WORDS = "river stone cloud maple lantern harbor violet copper meadow signal orbit canyon".split()


def make_corpus(folder: Path, n: int = 48) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        sents = [
            f"Record {i} opens the file on {w} number {i * 7}.",
            f"The {w} keeper counted {i * 13 + 5} items in district {i}.",
            f"Nobody else in town remembers the {w} festival of year {1900 + i}.",
            f"Closing note {i}: the archive of {w} stays sealed until {2000 + i}.",
        ]
        (folder / f"doc{i:03d}.txt").write_text(" ".join(sents) + "\n")
    return folder


def base_opts(corpus: Path, out: Path, **kw) -> Options:
    values = dict(
        corpus=str(corpus),
        out=str(out),
        tokenizer="approx",
        num_samples=6,
        turns=2,
        docs_per_group=8,
        target_tokens=600,
        length_tolerance=0.3,
        negative_ratio=0.0,
        progress=False,
    )
    values.update(kw)
    return Options(**values)


def relevant_docs(opts: Options) -> list[list]:
    corpus = read_corpus(opts.corpus, counter=get_token_counter("approx"))
    ctx = SampleContext(opts, corpus, get_token_counter("approx"), None)
    return [ctx.group(i)[: opts.turns] for i in range(opts.num_samples)]


def mark(doc, word: str) -> None:
    path = Path(doc.source)
    path.write_text(path.read_text().replace("Record", f"Record {word}", 1))


def documents_of(sample) -> dict[int, str]:
    """Parse the numbered documents back out of the first user message."""
    context = sample.messages[1].content
    parts = re.split(r"(?m)^(?:Document |文档 )(\d+)[:：]\n", context)
    docs = {int(parts[k]): parts[k + 1] for k in range(1, len(parts) - 1, 2)}
    last = max(docs)
    docs[last] = re.split(r"\n\n(?:Answer the questions|请根据)", docs[last])[0]
    return docs


def check_samples(out: Path, opts: Options) -> list:
    samples = list(read_samples(out))
    counter = get_token_counter(opts.tokenizer)
    low = int(opts.target_tokens * (1 - opts.length_tolerance))
    for s in samples:
        assert low <= s.meta["num_tokens"] <= opts.target_tokens
        docs = documents_of(s)
        assert len(docs) == s.meta["num_docs"]
        answers = [m.content for m in s.messages if m.role == "assistant"]
        sizes = [counter.count(docs[k]) for k in sorted(docs)]
        for r, answer in zip(s.meta["relevant"], answers, strict=True):
            if r["negative"]:
                assert "None of the reference documents" in answer or "没有任何一篇" in answer
                continue
            quote = re.search(r'["“](.*)["”]', answer, re.S).group(1)
            assert verify_quote(quote, docs[r["doc_index"]]).kind == "exact"
            assert quote in docs[r["doc_index"]]  # verbatim, not just normalised
            before = sum(sizes[: r["doc_index"] - 1])
            depth = before / (sum(sizes) - sizes[r["doc_index"] - 1])
            assert abs(depth - r["depth"]) < 0.03
    return samples


def test_llm_build_counts_and_cache(tmp_path: Path):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    opts = base_opts(corpus, out, generator="llm", model="stub", timeout=0.5, max_attempts=3)
    rel = relevant_docs(opts)
    mark(rel[0][0], "FABRICATE")
    mark(rel[1][0], "MALFORMED")
    mark(rel[2][1], "RATELIMIT")
    mark(rel[3][0], "SLOWPOKE")
    with StubOpenAIServer(QAResponder(timeout_delay=1.0), max_requests=200) as server:
        stats = build(opts.model_copy(update={"base_url": server.url}))
        first_requests = server.request_count
        assert server.statuses[429] == 1
    assert stats["samples"] == 6 and stats["dropped_samples"] == 0
    assert stats["turns"] == 11 and stats["dropped_turns"] == {"quote not in document": 1}
    assert stats["rejections"] == {"quote not in document": 3, "bad answer: invalid JSON": 1}
    assert stats["llm"]["retries"] == 2  # one 429, one timeout
    assert stats["llm"]["calls"] == 12 + 2 + 1  # 12 turns, +2 regenerations, +1 malformed retry
    assert first_requests == 15 + 2
    assert 0.3 < stats["effective_token_share"] < 1
    samples = check_samples(out, opts)
    by_id = {s.id: s for s in samples}
    assert by_id["pmdqa-000000"].meta["dropped_turns"] == {"quote not in document": 1}
    assert by_id["pmdqa-000001"].meta["relevant"][0]["attempts"] == 2  # malformed, then fine
    written = json.loads((out / "stats.json").read_text())
    assert written["samples"] == 6 and written["quote_match"] == {"exact": 11}

    # a second build into a new folder with the same cache: identical data, zero calls
    out2 = tmp_path / "out2"
    opts2 = opts.model_copy(update={"out": str(out2), "cache": str(out / "llm_cache.sqlite")})
    with StubOpenAIServer(QAResponder()) as server:
        stats2 = build(opts2.model_copy(update={"base_url": server.url}))
        assert server.request_count == 0
    assert stats2["llm"]["calls"] == 0 and stats2["llm"]["cache_hits"] == 15
    lines = lambda d: sorted((d / "data-00000.jsonl").read_text().splitlines())  # noqa: E731
    assert lines(out2) == lines(out)  # completion order may differ, content may not
    for key in ("samples", "turns", "rejections", "dropped_turns", "effective_token_share"):
        assert stats2[key] == stats[key]
    # rerun into the finished folder: nothing to do, same stats
    with StubOpenAIServer(QAResponder()) as server:
        stats3 = build(opts.model_copy(update={"base_url": server.url}))
        assert server.request_count == 0
    assert stats3["samples"] == 6 and stats3["rejections"] == stats["rejections"]


def test_sigkill_midway_then_resume_loses_nothing(tmp_path: Path):
    corpus = make_corpus(tmp_path / "corpus", n=60)
    out = tmp_path / "out"
    n = 24

    def command(url: str) -> list[str]:
        return [
            sys.executable, "-m", "longqa", "build-data", "--task", "paraphrase-mdqa",
            "--corpus", str(corpus), "--out", str(out), "--base-url", url, "--model", "stub",
            "--num-samples", str(n), "--turns", "2", "--docs-per-group", "8",
            "--target-tokens", "600", "--tokenizer", "approx", "--concurrency", "2",
            "--shard-size", "4", "--opt", "length_tolerance=0.3", "--no-progress",
        ]  # fmt: skip

    def lines() -> int:
        return sum(len(p.read_text().splitlines()) for p in out.glob("*.jsonl")) + sum(
            len(p.read_text().splitlines()) for p in out.glob(".*.partial.jsonl")
        )

    env = {**os.environ, "OPENAI_API_KEY": "test"}
    with StubOpenAIServer(QAResponder(), latency=0.05, max_requests=400) as server:
        proc = subprocess.Popen(command(server.url), env=env, cwd=REPO)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or lines() < 10):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = lines()
        assert 10 <= at_kill < n, "the build must be killed midway"
        first = server.request_count
        done = subprocess.run(command(server.url), env=env, cwd=REPO, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        second = server.request_count - first
    ids = [s.id for s in read_samples(out)]
    assert len(ids) == len(set(ids)) == n
    assert sorted(ids) == [f"pmdqa-{i:06d}" for i in range(n)]
    assert second <= (n - at_kill) * 2 + 8  # finished samples were not paid for again
    assert first + second <= n * 2 + 8
    assert json.loads((out / "stats.json").read_text())["samples"] == n


def test_extractive_is_deterministic_and_handles_chinese(tmp_path: Path):
    corpus = tmp_path / "zh"
    corpus.mkdir()
    for i in range(30):
        text = "".join(
            f"第{i}号档案记录了城市{j}号仓库的详细情况，其中共有{i * 10 + j}件物品被保存至今。"
            for j in range(4)
        )
        (corpus / f"z{i}.txt").write_text(text)
    opts = base_opts(corpus, tmp_path / "a", generator="extractive", negative_ratio=0.3)
    stats = build(opts)
    assert stats["samples"] == 6 and stats["shortfall"] == 0  # drops are replaced by new draws
    samples = check_samples(tmp_path / "a", opts)
    assert all(s.lang == "zh" for s in samples)
    assert "文档" in samples[0].messages[2].content
    build(opts.model_copy(update={"out": str(tmp_path / "b")}))
    assert (tmp_path / "a" / "data-00000.jsonl").read_bytes() == (
        tmp_path / "b" / "data-00000.jsonl"
    ).read_bytes()


@pytest.mark.skipif(not ESSAYS.exists(), reason="shared essay corpus not present")
def test_extractive_on_essays_quotes_verify_and_lengths_in_band(tmp_path: Path):
    opts = Options(
        corpus=str(ESSAYS),
        out=str(tmp_path / "out"),
        generator="extractive",
        tokenizer="approx",
        num_samples=12,
        target_tokens=8192,
        negative_ratio=0.2,
        progress=False,
    )
    stats = build(opts)
    assert stats["samples"] == 12 and stats["negative_turns"] > 0
    samples = check_samples(tmp_path / "out", opts)
    depths = [r["depth"] for s in samples for r in s.meta["relevant"] if not r["negative"]]
    assert min(depths) < 0.2 and max(depths) > 0.8  # spread over the whole context
    assert sum(stats["depth_histogram"]["counts"]) == len(depths)
    assert 0.5 < stats["effective_token_share"] < 0.95


def test_cli_rejects_unknown_and_bad_options(tmp_path: Path):
    with pytest.raises(LongqaError, match="`--turns` is not an option of task mix"):
        run_builder("mix", {"out": "x", "turns": 3})
    with pytest.raises(LongqaError, match="`--negative-ratio`"):
        run_builder("paraphrase-mdqa", {"corpus": "c", "out": "o", "negative_ratio": 2})
    with pytest.raises(LongqaError, match="needs --base-url and --model"):
        run_builder("paraphrase-mdqa", {"corpus": str(make_corpus(tmp_path / "c")), "out": "o"
                                        , "tokenizer": "approx"})  # fmt: skip
    out = tmp_path / "o2"
    run_builder("paraphrase-mdqa", {"corpus": str(tmp_path / "c"), "out": str(out),
                "generator": "extractive", "tokenizer": "approx", "num_samples": 2,
                "target_tokens": 600, "length_tolerance": 0.3, "progress": False})  # fmt: skip
    with pytest.raises(LongqaError, match="different options"):
        run_builder("paraphrase-mdqa", {"corpus": str(tmp_path / "c"), "out": str(out),
                    "generator": "extractive", "tokenizer": "approx", "turns": 1})  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not ESSAYS.exists(), reason="shared essay corpus not present")
def test_extractive_with_real_smollm2_tokenizer(tmp_path: Path):
    opts = Options(
        corpus=str(ESSAYS),
        out=str(tmp_path / "out"),
        generator="extractive",
        tokenizer="smollm2-135m",
        num_samples=4,
        target_tokens=8192,
        progress=False,
    )
    stats = build(opts)
    assert stats["samples"] == 4
    samples = check_samples(tmp_path / "out", opts)
    from longqa.models.checkpoints import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    for s in samples:  # the real chat template agrees with the recorded length (+- markup)
        ids = tok.apply_chat_template([m.model_dump() for m in s.messages], tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert abs(len(ids) - s.meta["num_tokens"]) < 0.02 * s.meta["num_tokens"]
