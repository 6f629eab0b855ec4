"""Benchmark: paraphrase-mdqa build-data against a real llama.cpp server (SmolLM2-135M GGUF).

Run: ``.venv/bin/python benchmarks/bench_llamacpp_build_data.py [--samples 6] [--corpus DIR]``
(needs the ``serve`` extra). One ``python -m llama_cpp.server`` (one thread) serves SmolLM2-135M
as float16 GGUF (see longqa/testing/llama_server.py for why not the shipped Q4_1) to both arms, in turn:

- baseline ``--response-format none``: the plain prompt, the JSON parsed leniently (what a server
  without structured output gets);
- ``--response-format auto``: the QA schema sent in the server's dialect (llama-cpp-python takes
  ``json_object`` + ``schema`` after refusing ``json_schema``).

Per arm: samples/s (wall time of the whole build, server warm), turn acceptance rate (accepted
turns / LLM answers), samples delivered of those requested, draws spent, rejections by reason; and
the share of answers that were a JSON object with the three string fields (``valid_json_rate``); and
the ratio auto/none. Each arm builds into a fresh folder with its own cache (no free answers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build(corpus: Path, out: Path, url: str, n: int, fmt: str, args) -> dict:  # noqa: ANN001
    cmd = [
        sys.executable, "-m", "longqa", "build-data", "--task", "paraphrase-mdqa",
        "--corpus", str(corpus), "--out", str(out), "--base-url", url, "--model", "smollm2",
        "--num-samples", str(n), "--turns", str(args.turns), "--docs-per-group", "8",
        "--target-tokens", str(args.target_tokens), "--max-doc-tokens", str(args.max_doc_tokens),
        "--tokenizer", "smollm2-135m", "--concurrency", "2", "--negative-ratio", "0",
        "--response-format", fmt, "--no-progress", "--opt", "max_new_tokens=200",
        "--opt", "temperature=0.3", "--max-attempts", str(args.max_attempts),
        "--opt", f"max_draws={args.max_draws or 2 * n + 8}", "--opt", "timeout=600",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "local", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr.decode()[-3000:])
    stats = json.loads((out / "stats.json").read_text())
    answers = stats["llm"]["calls"]
    unparsed = sum(v for k, v in stats["rejections"].items() if k.startswith("bad answer:"))
    return {
        "response_format": fmt,
        "dialect_used": stats["llm"]["response_format"] or "none",
        "samples": stats["samples"],
        "requested": n,
        "draws": stats["draws"]["used"],
        "wall_s": round(wall, 1),
        "samples_per_s": round(stats["samples"] / wall, 4),
        "llm_answers": answers,
        "accepted_turns": stats["turns"],
        "turn_acceptance": round(stats["turns"] / answers, 3) if answers else 0.0,
        "valid_json_rate": round((answers - unparsed) / answers, 3) if answers else 0.0,
        "rejections": stats["rejections"],
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    from longqa.core.paths import shared_essays
    from longqa.testing.llama_server import LlamaCppServer, smollm2_f16_gguf

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--target-tokens", type=int, default=2048)
    ap.add_argument("--max-doc-tokens", type=int, default=256)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--max-attempts", type=int, default=3, help="LLM tries per turn")
    ap.add_argument("--max-draws", type=int, default=None, help="default 2·samples + 8")
    args = ap.parse_args()
    corpus = args.corpus or shared_essays()
    if corpus is None:
        raise SystemExit("no corpus: pass --corpus (the shared essays are not beside the checkout)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LlamaCppServer(smollm2_f16_gguf(Path(tmp)), alias="smollm2", log_dir=Path(tmp)) as server,
    ):
        rows = [
            _build(corpus, Path(tmp) / fmt, server.url, args.samples, fmt, args)
            for fmt in ("none", "auto")
        ]
    base, new = rows
    ratio = {
        "samples_per_s": round(new["samples_per_s"] / base["samples_per_s"], 2)
        if base["samples_per_s"]
        else None,
        "turn_acceptance": round(new["turn_acceptance"] / base["turn_acceptance"], 2)
        if base["turn_acceptance"]
        else None,
        "valid_json_rate": round(new["valid_json_rate"] / base["valid_json_rate"], 2)
        if base["valid_json_rate"]
        else None,
    }
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "arms": rows,
                      "ratio_auto_over_none": ratio}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
