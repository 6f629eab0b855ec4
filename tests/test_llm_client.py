"""LLM client against a real local HTTP server: retries, timeouts, cache, JSON parsing, quotes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from data_builders.verify import verify_quote
from longqa.core.errors import LongqaError
from longqa.data.llm import LLMClient, LLMError, parse_json_object
from longqa.data.response_format import object_schema

sys.path.insert(0, str(Path(__file__).parent))
from stub_openai_server import QAResponder, StubOpenAIServer, StubReply  # noqa: E402

MSG = [
    {"role": "user", "content": "<document>\nFirst line. The second sentence is here.\n</document>"}
]


def run(coro):
    return asyncio.run(coro)


async def _complete(client: LLMClient, msgs, **kw):
    try:
        return await client.acomplete(msgs, **kw)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "text, ok, reason",
    [
        ('{"question": "q", "original_text": "o", "answer": "a"}', True, None),
        ('```json\n{"question": "q", "original_text": "o", "answer": "a"}\n```', True, None),
        (
            'Sure:\n{"question": "q", "original_text": "o", "answer": "a"} Hope it helps {',
            True,
            None,
        ),
        ('{"question": "q", "answer": "a"}', False, "missing key 'original_text'"),
        ('{"question": "q", "original_text": "", "answer": "a"}', False, "empty field"),
        ('{"question": 3, "original_text": "o", "answer": "a"}', False, "not a string"),
        ('{"question": "q", "original_text": "o', False, "invalid JSON"),
        ("I cannot do that.", False, "no JSON object"),
        ("   ", False, "empty answer"),
    ],
)
def test_parse_json_object(text, ok, reason):
    obj, why = parse_json_object(text, ("question", "original_text", "answer"))
    assert (obj is not None) == ok
    if reason:
        assert reason in why
    else:
        assert why is None and obj["answer"] == "a"


def test_429_then_success_and_usage(tmp_path: Path):
    with StubOpenAIServer(QAResponder()) as server:
        msgs = [{"role": "user", "content": "<document>\nRATELIMIT x. Second one.\n</document>"}]
        client = LLMClient(base_url=server.url, model="stub", backoff=0.01)
        reply = run(_complete(client, msgs, seed=1))
        assert server.statuses[429] == 1 and server.statuses[200] == 1
    assert client.usage.retries == 1 and client.usage.calls == 1
    assert client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0
    obj, _ = parse_json_object(reply.text, ("original_text",))
    assert obj["original_text"] == "Second one."


def test_timeout_is_retried():
    with StubOpenAIServer(QAResponder(timeout_delay=1.0)) as server:
        msgs = [{"role": "user", "content": "<document>\nSLOWPOKE a. Second b.\n</document>"}]
        client = LLMClient(base_url=server.url, model="stub", timeout=0.3, backoff=0.01)
        reply = run(_complete(client, msgs))
    assert client.usage.retries == 1 and "Second b." in reply.text


def test_gives_up_after_max_retries():
    responder = lambda body, n: StubReply(503, json.dumps({"error": {"message": "down"}}))
    with StubOpenAIServer(responder) as server:
        client = LLMClient(base_url=server.url, model="stub", max_retries=2, backoff=0.01)
        with pytest.raises(LLMError, match="after 3 tries"):
            run(_complete(client, MSG))
        assert server.request_count == 3
    assert client.usage.failures == 1


QA = object_schema(("question", "original_text", "answer"), name="qa")
OPENAI_LIKE = ("json_schema", "json_object")  # OpenAI, vLLM, llama-server
# json_object + schema; json_schema fails request validation, answered with HTTP 500 naming it
LLAMA_CPP_PYTHON = ("json_object",)


async def _twice(client: LLMClient, **kw):
    try:
        a = await client.acomplete(MSG, seed=1, **kw)
        b = await client.acomplete(MSG, seed=2, **kw)
        return a, b
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "formats, status, tried, used",
    [
        (OPENAI_LIKE, 400, ["json_schema"], "json_schema"),
        (LLAMA_CPP_PYTHON, 500, ["json_schema", "json_object"], "json_object"),
        (LLAMA_CPP_PYTHON, 422, ["json_schema", "json_object"], "json_object"),
        ((), 400, ["json_schema", "json_object", None], "none"),
    ],
    ids=["openai-vllm", "llama-cpp-python", "fastapi-422", "no-structured-output"],
)
def test_auto_response_format_falls_back_and_remembers(formats, status, tried, used):
    with StubOpenAIServer(formats=formats, refusal_status=status) as server:
        client = LLMClient(base_url=server.url, model="stub")
        a, b = run(_twice(client, json_mode=True, schema=QA))
        seen = server.formats_seen
    assert a.text == b.text == "ok"
    # first call walks the dialects up to the accepted one; the second goes straight there
    assert [f and f["type"] for f in seen] == tried + tried[-1:]
    assert client.dialect == used and client.usage.response_format == used
    assert client.refused == [t for t in ("json_schema", "json_object")[: len(tried) - 1]]
    last = seen[-1]
    if used == "json_schema":
        assert last["json_schema"]["schema"] == QA and last["json_schema"]["name"] == "qa"
    elif used == "json_object":
        assert last["schema"] == QA  # llama-cpp-python's dialect carries the schema itself
    else:
        assert last is None
    assert client.usage.calls == 2 and client.usage.failures == 0 and client.usage.retries == 0


@pytest.mark.parametrize("forced", ["json_schema", "json_object", "none"])
def test_forced_response_format_is_sent_as_is(forced):
    with StubOpenAIServer(formats=OPENAI_LIKE) as server:
        client = LLMClient(base_url=server.url, model="stub", response_format=forced)
        run(_twice(client, json_mode=True, schema=QA))
        seen = server.formats_seen
    assert len(seen) == 2 and seen[0] == seen[1]
    assert (seen[0] and seen[0]["type"]) == (None if forced == "none" else forced)


def test_forced_response_format_refused_names_the_alternatives():
    with StubOpenAIServer(formats=LLAMA_CPP_PYTHON, refusal_status=422) as server:
        client = LLMClient(base_url=server.url, model="stub", response_format="json_schema")
        with pytest.raises(LongqaError, match="refused response_format 'json_schema'.*json_object"):
            run(_complete(client, MSG, json_mode=True, schema=QA))


def test_plain_requests_carry_no_response_format():
    with StubOpenAIServer(formats=()) as server:
        client = LLMClient(base_url=server.url, model="stub")
        run(_complete(client, MSG))
        assert server.formats_seen == [None] and client.dialect == "json_schema"


def test_other_400_is_not_taken_for_a_refused_format():
    responder = lambda body, n: StubReply(
        400, json.dumps({"error": {"message": "prompt too long"}})
    )
    with StubOpenAIServer(responder) as server:
        client = LLMClient(base_url=server.url, model="stub")
        with pytest.raises(LLMError, match="rejected \\(400\\).*prompt too long"):
            run(_complete(client, MSG, json_mode=True, schema=QA))
        assert server.request_count == 1 and client.refused == []


def test_unknown_response_format_is_a_one_line_error():
    with pytest.raises(LongqaError, match="--response-format json: expected one of auto"):
        LLMClient(base_url="http://127.0.0.1:9/v1", model="m", response_format="json")


def test_cache_makes_second_run_free(tmp_path: Path):
    cache = tmp_path / "cache.sqlite"
    with StubOpenAIServer(QAResponder()) as server:
        c1 = LLMClient(base_url=server.url, model="stub", cache_path=cache)
        r1 = run(_complete(c1, MSG, temperature=0.5, seed=3))
        c2 = LLMClient(base_url=server.url, model="stub", cache_path=cache)
        r2 = run(_complete(c2, MSG, temperature=0.5, seed=3))
        assert server.request_count == 1
        c3 = LLMClient(base_url=server.url, model="stub", cache_path=cache)
        run(_complete(c3, MSG, temperature=0.5, seed=4))  # other parameters: a new request
        assert server.request_count == 2
    assert r2.cached and not r1.cached and r1.text == r2.text
    assert c2.usage.cache_hits == 1 and c2.usage.calls == 0


def test_concurrency_limit_is_respected():
    active, peak = [0], [0]

    def responder(body, n):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        active[0] -= 1
        return StubReply(content="ok")

    async def many(client):
        try:
            await asyncio.gather(
                *[client.acomplete([{"role": "user", "content": str(i)}]) for i in range(12)]
            )
        finally:
            await client.aclose()

    with StubOpenAIServer(responder) as server:
        run(many(LLMClient(base_url=server.url, model="stub", concurrency=3)))
        assert server.request_count == 12
    assert 2 <= peak[0] <= 3


def test_cost_counter():
    with StubOpenAIServer(QAResponder()) as server:
        client = LLMClient(
            base_url=server.url, model="stub", price_input_per_1m=1e6, price_output_per_1m=0
        )
        run(_complete(client, MSG))
    assert client.usage.cost == pytest.approx(client.usage.prompt_tokens)


def test_verify_quote_exact_fuzzy_and_absent():
    doc = "The quick  brown fox\njumps over the “lazy” dog. Then it ran into the forest."
    exact = verify_quote('brown fox jumps over the "lazy" dog.', doc)
    assert exact.ok and exact.kind == "exact" and exact.text == doc[11:47]
    fuzzy = verify_quote("brown fox jumped over the lazy dogs.", doc, threshold=0.85)
    assert fuzzy.ok and fuzzy.kind == "fuzzy" and fuzzy.text in doc and fuzzy.ratio < 1
    assert not verify_quote("brown fox jumped over the lazy dogs.", doc, threshold=0.99).ok
    absent = verify_quote("Nothing like this sentence occurs anywhere.", doc)
    assert not absent.ok and absent.kind == "none"


def test_run_sync_works_inside_a_running_event_loop():
    """Builders call run_sync; in Jupyter an event loop is already running."""
    import asyncio

    from longqa.data.llm import run_sync

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert run_sync(double(3)) == 6

    async def outer() -> int:  # a running loop, as in a notebook cell
        return run_sync(double(5))

    assert asyncio.run(outer()) == 10


def test_unreachable_endpoint_stops_the_run_instead_of_dropping_data():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LLMClient(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff=0.01
    )
    with pytest.raises(LongqaError, match=f"127.0.0.1:{port}/v1 unreachable after 2 tries"):
        run(_complete(client, MSG))
