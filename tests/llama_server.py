"""A real llama.cpp server (``python -m llama_cpp.server``, extra ``serve``) for integration tests.

Usage::

    with LlamaCppServer(gguf_path, alias="smollm2") as server:   # waits for /v1/models
        ...server.url...
        server.kill()      # SIGKILL, as a crash would
        server.start()     # same port again

Every wait is bounded; the server's log goes to ``<log_dir>/llama_server.log``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    def __init__(
        self,
        model: Path,
        *,
        alias: str = "smollm2",
        n_ctx: int = 4096,
        log_dir: Path | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self.model, self.alias, self.n_ctx = Path(model), alias, n_ctx
        self.port = free_port()
        self.log = Path(log_dir or ".") / "llama_server.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(min(4, os.cpu_count() or 1)),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    models = json.loads(r.read())
                if any(m.get("id") == self.alias for m in models.get("data", [])):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"llama_cpp.server not ready after {self.ready_timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no clean shutdown
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> LlamaCppServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
