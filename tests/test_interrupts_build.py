"""`longqa build-data` under Ctrl-C, SIGTERM, kill -9, a second writer and a full disk.

Real subprocesses (the extractive generator: no LLM), each checked against an uninterrupted build
of the same options: after the rerun the rows on disk are the same, none lost or duplicated.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
from interrupt_fixtures import interrupt, run, start, wait_for

from longqa.core.faults import WriteFailed
from longqa.core.interrupt import MESSAGE

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "paul_graham_essays"
OPTIONS = {
    "generator": "extractive",
    "corpus": str(CORPUS),
    "num_samples": 300,
    "target_tokens": 2048,
    "shard_size": 20,
    "tokenizer": "approx",
    "progress": False,
}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared essays corpus missing")


def args(out: Path) -> list[str]:
    flags = ["build-data", "--task", "paraphrase-mdqa", "--out", str(out)]
    for key, value in OPTIONS.items():
        flag = "--" + key.replace("_", "-")
        flags += (
            [flag]
            if value is True
            else [f"--no-{flag[2:]}"]
            if value is False
            else [flag, str(value)]
        )
    return flags


def rows(out: Path) -> list[str]:
    """Every sample line of the finished shards, sorted (shard boundaries may differ)."""
    assert not (out / ".data.partial.jsonl").exists()
    lines = [line for f in sorted(out.glob("data-*.jsonl")) for line in f.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)), "duplicated sample"
    return sorted(lines)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("ref") / "data"
    rc, _, lines = run(args(out), out.with_suffix(".log"))
    assert rc == 0, lines
    found = rows(out)
    assert len(found) == OPTIONS["num_samples"]
    return found


def test_ctrl_c_stops_fast_a_second_writer_stops_and_a_rerun_completes(reference, tmp_path):
    out = tmp_path / "data"
    first = start(args(out), tmp_path / "first.log")
    wait_for(lambda: (out / "data-00000.jsonl").exists(), first)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-build while a second one starts
    rc, seconds, lines = run(args(out), tmp_path / "second.log", timeout=60)
    assert rc == 2 and seconds <= 10, (rc, seconds, lines)
    assert len(lines) == 1 and f"is in use by pid {first.pid}" in lines[0], lines
    assert "build-data" in lines[0] and "--wait" in lines[0]

    rc, seconds, lines = interrupt(first, signal.SIGINT)
    assert rc == 130 and seconds <= 10, (rc, seconds, lines)
    assert lines == [MESSAGE]
    done = rows(out)  # the partial shard was finalised on the way out
    assert 0 < len(done) < OPTIONS["num_samples"]
    assert set(done) <= set(reference)

    rc, _, lines = run(args(out), tmp_path / "rerun.log")
    assert rc == 0, lines
    assert rows(out) == reference
    assert not list(out.glob(".longqa.lock*"))  # released, nothing left behind


def test_kill_9_then_sigterm_then_rerun(reference, tmp_path):
    out = tmp_path / "data"
    killed = start(args(out), tmp_path / "killed.log")
    wait_for(lambda: (out / "data-00001.jsonl").exists(), killed)
    killed.kill()  # SIGKILL: the lock's holder record stays behind
    killed.wait()
    killed.fh.close()
    assert json.loads((out / ".longqa.lock.json").read_text())["pid"] == killed.pid

    second = start(args(out), tmp_path / "second.log")
    wait_for(lambda: (out / "data-00003.jsonl").exists(), second)
    os.kill(second.pid, signal.SIGSTOP)
    rc, seconds, lines = interrupt(second, signal.SIGTERM)
    assert rc == 130 and seconds <= 10, (rc, seconds, lines)
    assert lines[-1] == MESSAGE and not any("Traceback" in line for line in lines)
    assert (
        f"taking over the lock of pid {killed.pid}" in lines[0] and "no longer running" in lines[0]
    )
    assert len(lines) == 2

    rc, _, lines = run(args(out), tmp_path / "rerun.log")
    assert rc == 0, lines
    assert rows(out) == reference


def test_full_disk_during_a_shard_is_one_line_and_the_rerun_completes(
    reference, tmp_path, monkeypatch
):
    from longqa.cli.build_data import run_builder

    out = tmp_path / "data"
    values = {**OPTIONS, "out": str(out)}
    real_replace = os.replace

    def full_disk(src, dst, *a, **kw):
        if str(dst).endswith("data-00002.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(WriteFailed) as err:
        run_builder("paraphrase-mdqa", values)
    message = str(err.value)
    assert "\n" not in message and ".data.partial.jsonl" in message
    assert "No space left on device" in message
    before = {f.name: f.read_text() for f in out.glob("data-*.jsonl")}
    assert sorted(before) == ["data-00000.jsonl", "data-00001.jsonl"]
    assert (out / ".data.partial.jsonl").exists()  # kept for the rerun
    monkeypatch.setattr(os, "replace", real_replace)
    run_builder("paraphrase-mdqa", values)
    assert rows(out) == reference
    assert all((out / name).read_text() == text for name, text in before.items())


def test_ctrl_c_cancels_llm_requests_in_flight_and_the_rerun_completes(tmp_path, monkeypatch):
    """The llm generator waits on the network: a stop cancels the requests in flight (here
    stalled for a minute) instead of waiting for them; answers received stay cached."""
    import dataclasses

    from stub_openai_server import QAResponder, StubOpenAIServer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "river stone cloud maple lantern harbor violet copper meadow signal orbit canyon"
    for i, w in enumerate(words.split() * 3):
        (corpus / f"doc{i:03d}.txt").write_text(
            f"Record {i} opens the file on {w} number {i * 7}. The {w} keeper counted "
            f"{i * 13 + 5} items in district {i}. Nobody else in town remembers the {w} "
            f"festival of year {1900 + i}. Closing note {i}: the archive stays sealed.\n"
        )
    out, n = tmp_path / "llm", 12

    def command(url: str) -> list[str]:
        return [
            "build-data", "--task", "paraphrase-mdqa", "--corpus", str(corpus), "--out", str(out),
            "--base-url", url, "--model", "stub", "--num-samples", str(n), "--turns", "2",
            "--docs-per-group", "8", "--target-tokens", "600", "--tokenizer", "approx",
            "--concurrency", "2", "--shard-size", "4", "--opt", "length_tolerance=0.3",
            "--no-progress",
        ]  # fmt: skip

    answer = QAResponder()

    def stall_later(body, k):  # the first 8 requests answer, later ones stall for a minute
        reply = answer(body, k)
        return reply if k <= 8 else dataclasses.replace(reply, delay=60)

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with StubOpenAIServer(stall_later) as server:
        proc = start(command(server.url), tmp_path / "first.log")
        wait_for(lambda: server.request_count >= 10, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        rc, seconds, lines = interrupt(proc, signal.SIGINT)
    assert rc == 130 and seconds <= 10, (rc, seconds, lines)
    assert lines == [MESSAGE]
    with StubOpenAIServer(QAResponder()) as server:
        rc, _, lines = run(command(server.url), tmp_path / "rerun.log")
    assert rc == 0, lines
    ids = sorted(json.loads(line)["id"] for line in rows(out))
    assert ids == [f"pmdqa-{i:06d}" for i in range(n)]
