"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI chat-completions API for tests.

Usage::

    with StubOpenAIServer(responder, latency=0.05) as server:
        client = LLMClient(base_url=server.url, model="stub")
        ...
        server.request_count

``responder(body, n)`` gets the parsed request JSON and the 1-based request number and returns a
:class:`StubReply` (status, content, extra delay, headers). ``qa_responder`` answers the
paraphrase-mdqa prompt with a quote taken from the document between ``<document>`` tags, and
misbehaves on purpose when the document contains a marker word:

- ``MALFORMED``: the first answer for that prompt is broken JSON, later ones are fine;
- ``FABRICATE``: the quote is never in the document (always rejected by verification);
- ``RATELIMIT``: the first request for that prompt gets HTTP 429, then success;
- ``SLOWPOKE``: the first request for that prompt stalls past the client timeout, then success.

The server answers at most ``max_requests`` requests (later ones get HTTP 400), so a test can never
loop forever against it.

``formats`` plays a server's structured-output dialect: the ``response_format`` types it accepts
(None: any). A request with another type is refused with ``refusal_status`` and an error naming
``response_format``, as real servers do: llama-cpp-python takes ``json_object`` (+ ``schema``) and
answers ``json_schema`` with a validation error; a server without structured output refuses all.
Every request's ``response_format`` (or None) is recorded in ``server.formats_seen``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StubReply:
    status: int = 200
    content: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[dict[str, Any], int], StubReply]


class StubOpenAIServer:
    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        max_requests: int = 100_000,
        formats: tuple[str, ...] | None = None,
        refusal_status: int = 400,
    ) -> None:
        self.responder = responder or (lambda body, n: StubReply(content="ok"))
        self.latency = latency
        self.max_requests = max_requests
        self.request_count = 0
        self.statuses: Counter[int] = Counter()
        self.formats = formats
        self.refusal_status = refusal_status
        self.formats_seen: list[dict[str, Any] | None] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> StubOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                fmt = body.get("response_format")
                with server._lock:
                    server.request_count += 1
                    n = server.request_count
                    server.formats_seen.append(fmt)
                if n > server.max_requests:
                    reply = StubReply(400, json.dumps({"error": {"message": "budget exhausted"}}))
                elif not self.path.endswith("/chat/completions"):
                    reply = StubReply(404, json.dumps({"error": {"message": "no route"}}))
                elif (
                    fmt is not None
                    and server.formats is not None
                    and (fmt.get("type") not in server.formats)
                ):
                    msg = f"response_format type '{fmt.get('type')}' is not supported"
                    reply = StubReply(
                        server.refusal_status, json.dumps({"error": {"message": msg}})
                    )
                else:
                    reply = server.responder(body, n)
                with server._lock:
                    server.statuses[reply.status] += 1
                time.sleep(server.latency + reply.delay)
                if reply.status == 200:
                    payload = _completion(body, reply.content or "")
                else:
                    payload = reply.content or json.dumps({"error": {"message": "stub error"}})
                data = payload.encode("utf-8")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default of 5 refuses bursts of concurrent connections
    daemon_threads = True


def _completion(body: dict[str, Any], content: str) -> str:
    prompt_chars = sum(len(m.get("content", "")) for m in body.get("messages", []))
    return json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4,
                "completion_tokens": len(content) // 4,
                "total_tokens": prompt_chars // 4 + len(content) // 4,
            },
        }
    )


_DOC = re.compile(r"<document>\n?(.*?)\n?</document>", re.S)


class QAResponder:
    """Answers the paraphrase-mdqa question-writing prompt (see module docstring for markers)."""

    def __init__(self, timeout_delay: float = 1.5) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.timeout_delay = timeout_delay

    def __call__(self, body: dict[str, Any], n: int) -> StubReply:
        prompt = body["messages"][-1]["content"]
        m = _DOC.search(prompt)
        doc = m.group(1) if m else ""
        key = prompt
        with self.lock:
            self.seen[key] += 1
            first = self.seen[key] == 1
        if "RATELIMIT" in doc and first:
            return StubReply(429, json.dumps({"error": {"message": "slow down"}}), 0.0,
                             {"Retry-After": "0.05"})  # fmt: skip
        if "SLOWPOKE" in doc and first:
            return StubReply(200, "{}", delay=self.timeout_delay)
        if "MALFORMED" in doc and first:
            return StubReply(200, '```json\n{"question": "What is said?", "original_text": "oops')
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc.strip()) if s]
        quote = sentences[min(1, len(sentences) - 1)] if sentences else ""
        if "FABRICATE" in doc:
            quote = "This sentence was invented and appears in no reference document at all."
        obj = {
            "question": f"What does the text say about {quote.split(' ')[0].lower()}?",
            "original_text": quote,
            "answer": "It says so directly.",
        }
        return StubReply(200, "Sure! Here it is:\n" + json.dumps(obj) + "\nHope this helps.")
