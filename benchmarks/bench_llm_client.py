"""Benchmark: LLM client throughput against a 50 ms stub server, and extractive samples/s.

Run: ``.venv/bin/python benchmarks/bench_llm_client.py [--requests 2000] [--concurrency 32]``

1. A stub OpenAI-compatible server (longqa/testing/openai_stub.py, in its own process so it does not
   share the client's GIL) answers every request after ``--latency`` seconds. With ``concurrency``
   requests in flight the best possible throughput is ``concurrency / latency`` requests/s (the
   "concurrency bound"); we report the measured rate and its share of that bound (goal >= 80 %).
2. The offline extractive generator builds 8K-token paraphrase-mdqa samples from the shared essay
   corpus (``../shared/corpora/paul_graham_essays``) and we report samples/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import tempfile
import time


def _serve(latency: float, port_queue: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    from longqa.testing.openai_stub import StubOpenAIServer, StubReply

    with StubOpenAIServer(
        lambda body, n: StubReply(content='{"answer": "ok"}'), latency=latency
    ) as s:
        port_queue.put(s.url)
        stop.wait()


async def _fire(url: str, n: int, concurrency: int) -> tuple[float, dict]:
    from longqa.data.llm import LLMClient

    client = LLMClient(base_url=url, model="stub", concurrency=concurrency)
    warm = [{"role": "user", "content": "warm-up"}]
    await asyncio.gather(*[client.acomplete(warm, seed=i) for i in range(concurrency)])
    t0, c0 = time.perf_counter(), time.process_time()
    msgs = [[{"role": "user", "content": f"request {i}"}] for i in range(n)]
    await asyncio.gather(*[client.acomplete(m, max_tokens=16) for m in msgs])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    await client.aclose()
    return elapsed, {**client.usage.as_dict(), "cpu": cpu}


def bench_client(n: int, concurrency: int, latency: float) -> None:
    port_queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    proc = mp.Process(target=_serve, args=(latency, port_queue, stop), daemon=True)
    proc.start()
    try:
        url = port_queue.get(timeout=30)
        elapsed, usage = asyncio.run(_fire(url, n, concurrency))
    finally:
        stop.set()
        proc.join(timeout=10)
    rate = n / elapsed
    bound = concurrency / latency
    print(
        f"llm client: {n} requests, concurrency {concurrency}, server latency {latency * 1e3:.0f} ms"
    )
    print(
        f"  throughput {rate:.1f} req/s, bound {bound:.1f} req/s -> {100 * rate / bound:.1f} % of bound"
    )
    print(f"  retries {usage['retries']}, failures {usage['failures']}, elapsed {elapsed:.2f} s")
    per = usage["cpu"] / n
    print(f"  client CPU {per * 1e3:.2f} ms/request -> CPU ceiling {1 / per:.0f} req/s on one core")
    print(f"  load average during run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def bench_extractive(samples: int, tokenizer: str) -> None:
    from data_builders.paraphrase_mdqa import Options, build
    from longqa.core.paths import shared_essays

    corpus = shared_essays()
    if corpus is None:
        print("extractive: skipped (shared essay corpus not present)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        opts = Options(corpus=str(corpus), out=tmp, generator="extractive", tokenizer=tokenizer,
                       num_samples=samples, target_tokens=8192, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        stats = build(opts)
        elapsed = time.perf_counter() - t0
    print(f"extractive generator ({tokenizer} tokenizer, 8192-token samples, incl. corpus read):")
    print(
        f"  {stats['samples']} samples in {elapsed:.2f} s -> {stats['samples'] / elapsed:.1f} samples/s"
    )
    print(
        f"  effective-token share {stats['effective_token_share']}, mean length {stats['tokens']['mean']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--tokenizer", default="approx")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {mp.cpu_count()} CPUs")
    bench_client(args.requests, args.concurrency, args.latency)
    bench_extractive(args.samples, args.tokenizer)


if __name__ == "__main__":
    main()
