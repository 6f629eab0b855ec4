"""OpenAI-compatible chat client for data building: concurrency, retries, a response cache, usage.

Usage (async; the builders run many requests at once)::

    client = LLMClient(base_url="http://localhost:8000/v1", model="qwen2.5-7b-instruct",
                       concurrency=32, cache_path="out/llm_cache.sqlite")
    schema = object_schema(("question", "answer"))   # longqa.data.response_format
    reply = await client.acomplete(messages, temperature=0.7, max_tokens=512, json_mode=True,
                                   schema=schema)
    obj, reason = parse_json_object(reply.text, required=("question", "answer"))
    client.usage.as_dict()   # calls, cache hits, retries, prompt/completion tokens, cost
    await client.aclose()

Any endpoint speaking the OpenAI chat-completions API works (vLLM, llama.cpp server, Ollama,
OpenAI itself) through the ``openai`` package. The API key comes from ``api_key`` or
``$OPENAI_API_KEY``; local servers get a dummy key. Requests run at most ``concurrency`` at a time;
rate limits (429), server errors (5xx), timeouts and dropped connections are retried with
exponential backoff and jitter (``Retry-After`` honoured). A request that still fails is an
:class:`LLMError` (the builders count it and move on), except an endpoint nobody answers at all:
that stops the run with a :class:`LongqaError`, so a server outage never turns into dropped data
(the rerun resumes, answers already paid for come from the cache).

Structured output: a ``json_mode`` request carries ``response_format`` in the dialect the server
speaks (``response_format`` argument; :mod:`longqa.data.response_format`), with the JSON schema when
one is given, so that small models produce parseable JSON:

- ``json_schema`` — OpenAI, vLLM, llama.cpp's own ``llama-server``:
  ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}``;
- ``json_object`` — llama-cpp-python's server (and OpenAI's schema-less JSON mode):
  ``{"type": "json_object", "schema": {...}}``;
- ``none`` — no ``response_format``: the plain prompt, the answer parsed leniently;
- ``auto`` (default) — try the dialects in that order; a refusal (HTTP 400/422, or the 500 that
  llama-cpp-python's server sends, whose error names ``response_format``) moves to the next one,
  which is then remembered for the rest of the run.

A forced dialect the server refuses is a :class:`LongqaError` naming the other choices.
Successful answers are stored in a SQLite cache keyed by (model, messages, parameters), so a killed
build resumes without paying twice; pass a different ``seed`` to ask for a fresh answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.data.llm_cache import ResponseCache, cache_key
from longqa.data.response_format import (
    AUTO_ORDER,
    RESPONSE_FORMATS,
    names_response_format,
    response_format_payload,
)

DUMMY_KEY = "sk-local-no-key"


class LLMError(Exception):
    """A request that failed for good (after retries, or a non-retryable status)."""


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code, also where an event loop is already
    running (Jupyter): then it runs on a fresh loop in a worker thread. A Ctrl-C/SIGTERM under the
    CLI cancels it (:func:`longqa.core.interrupt.run_async`): requests in flight are discarded,
    answers already received stay in the cache."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        from longqa.core.interrupt import run_async

        return run_async(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Usage:
    """Counters over the client's lifetime (cache hits cost nothing)."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    response_format: str = ""  # the dialect the last JSON request went through

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = round(self.cost, 6)
        return d


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    finish_reason: str | None = None


class LLMClient:
    """Async OpenAI-compatible chat client (see module docstring)."""

    def __init__(
        self,
        *,
        base_url: str | None,
        model: str,
        api_key: str | None = None,
        concurrency: int = 16,
        max_retries: int = 6,
        timeout: float = 120.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        cache_path: str | Path | None = None,
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
        response_format: str = "auto",
    ) -> None:
        if not model:
            raise LongqaError("--model is required for the LLM generator (the served model name)")
        if concurrency < 1:
            raise LongqaError(f"--concurrency must be >= 1 (got {concurrency})")
        self.base_url = base_url
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or DUMMY_KEY
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.price_in = price_input_per_1m
        self.price_out = price_output_per_1m
        if response_format not in RESPONSE_FORMATS:
            raise LongqaError(
                f"--response-format {response_format}: expected one of {', '.join(RESPONSE_FORMATS)}"
            )
        self.response_format = response_format
        # the dialect in use: fixed, or (auto) the first one the server has not refused yet
        self.dialect = AUTO_ORDER[0] if response_format == "auto" else response_format
        self.refused: list[str] = []
        self.usage = Usage()
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    def _ensure(self) -> None:
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout
            )
            self._sem = asyncio.Semaphore(self.concurrency)

    async def acomplete(
        self,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        json_mode: bool = False,
        schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Reply:
        """One chat completion (cached). Raises :class:`LLMError` when it fails for good.

        ``json_mode`` asks for a JSON answer through ``response_format`` (with ``schema`` when
        given) in the client's dialect; see the module docstring."""
        self._ensure()
        msgs = [dict(m) for m in messages]
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            params["seed"] = seed
        if json_mode:
            params["json"] = True
            if schema:
                params["schema"] = schema
            if self.response_format != "auto":
                params["response_format"] = self.response_format
        key = cache_key(self.model, msgs, params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.cache_hits += 1
                return Reply(hit["text"], 0, 0, True, hit.get("finish_reason"))
        assert self._sem is not None
        async with self._sem:
            reply = await self._request(msgs, params)
        if self.cache is not None:
            self.cache.put(key, {"text": reply.text, "finish_reason": reply.finish_reason})
        return reply

    async def _request(self, msgs: list[dict[str, str]], params: dict[str, Any]) -> Reply:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": msgs,
            "temperature": params["temperature"],
            "max_tokens": params["max_tokens"],
        }
        if "seed" in params:
            kwargs["seed"] = params["seed"]
        attempt = 0
        while True:
            dialect = self.dialect
            fmt = (
                response_format_payload(dialect, params.get("schema"))
                if params.get("json")
                else None
            )
            if fmt is None:
                kwargs.pop("response_format", None)
            else:
                kwargs["response_format"] = fmt
            try:
                resp = await self._client.chat.completions.create(**kwargs)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if fmt is not None and names_response_format(exc):
                    self._refuse(dialect, exc)
                    continue
                self.usage.failures += 1
                raise LLMError(f"request rejected ({exc.status_code}): {_short(exc)}") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise LongqaError(f"LLM endpoint refused the API key: {_short(exc)}") from None
            except openai.NotFoundError as exc:
                raise LongqaError(
                    f"LLM endpoint {self.base_url}: model '{self.model}' or route not found "
                    f"({_short(exc)})"
                ) from None
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.APIStatusError,
            ) as exc:
                status = getattr(exc, "status_code", None)
                if fmt is not None and status == 500 and names_response_format(exc):
                    self._refuse(dialect, exc)  # llama-cpp-python answers a bad format with 500
                    continue
                retryable = status is None or status == 429 or status >= 500 or status == 408
                if not retryable or attempt >= self.max_retries:
                    self.usage.failures += 1
                    if type(exc) is openai.APIConnectionError:  # not a timeout: nobody listens
                        raise LongqaError(
                            f"LLM endpoint {self.base_url} unreachable after {attempt + 1} tries "
                            f"({_short(exc)}); rerun the same command to resume once it is up"
                        ) from None
                    raise LLMError(f"{type(exc).__name__} after {attempt + 1} tries") from None
                attempt += 1
                self.usage.retries += 1
                await asyncio.sleep(self._delay(attempt, exc))
                continue
            break
        self.usage.calls += 1
        if params.get("json"):
            self.usage.response_format = dialect
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content or "") if choice else ""
        u = resp.usage
        pt = int(getattr(u, "prompt_tokens", 0) or 0) if u else 0
        ct = int(getattr(u, "completion_tokens", 0) or 0) if u else 0
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        self.usage.cost += (pt * self.price_in + ct * self.price_out) / 1e6
        return Reply(text, pt, ct, False, choice.finish_reason if choice else None)

    def _refuse(self, dialect: str, exc: Exception) -> None:
        """The server refused ``dialect``: move on to the next one (auto) or stop (forced)."""
        if self.response_format != "auto":
            others = ", ".join(f for f in RESPONSE_FORMATS if f != dialect)
            raise LongqaError(
                f"LLM endpoint {self.base_url} refused response_format '{dialect}' "
                f"({_short(exc)}); try --response-format {others}"
            )
        if self.dialect == dialect:  # concurrent refusals of the same dialect advance only once
            self.refused.append(dialect)
            self.dialect = AUTO_ORDER[AUTO_ORDER.index(dialect) + 1]

    def _delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        base = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return base * (0.5 + random.random() / 2)

    def complete(self, messages: Sequence[dict[str, str]], **kw: Any) -> Reply:
        """Synchronous convenience wrapper (scripts and notebooks)."""

        async def _one() -> Reply:
            try:
                return await self.acomplete(messages, **kw)
            finally:
                await self.aclose()

        return run_sync(_one())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _short(exc: Exception, limit: int = 160) -> str:
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def parse_json_object(
    text: str, required: Sequence[str] = ()
) -> tuple[dict[str, Any] | None, str | None]:
    """Find the JSON object in a model answer: ``(obj, None)`` or ``(None, reject_reason)``.

    Tolerates code fences, prose before/after the object, and several objects (first complete one
    with the required keys wins). Reasons: ``empty answer``, ``no JSON object``, ``invalid JSON``,
    ``missing key 'k'``, ``empty field 'k'``, ``field 'k' is not a string``.
    """
    if not text or not text.strip():
        return None, "empty answer"
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    saw_brace = False
    for cand in candidates:
        for m in re.finditer(r"\{", cand):
            saw_brace = True
            try:
                obj, _ = decoder.raw_decode(cand, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                found.append(obj)
        if found:
            break
    if not found:
        return None, "invalid JSON" if saw_brace else "no JSON object"
    reason = None
    for obj in found:
        reason = _check_fields(obj, required)
        if reason is None:
            return obj, None
    return None, reason


def _check_fields(obj: dict[str, Any], required: Sequence[str]) -> str | None:
    for k in required:
        if k not in obj:
            return f"missing key '{k}'"
        if not isinstance(obj[k], str):
            return f"field '{k}' is not a string"
        if not obj[k].strip():
            return f"empty field '{k}'"
    return None
