"""The end-to-end demo behind ``make demo``: every step is a ``longqa`` command, printed then run.

    python -m longqa.cli.demo --out runs/demo [--trials 3] [--length 12288] [--corpus DIR]

On a CPU machine with the real SmolLM2-135M-Instruct model (8192-token window) it shows:

1. training-free extension: passkey retrieval at 12K tokens with no RoPE scaling vs dynamic YaRN;
2. W-shaped paraphrase multi-document QA data built offline (extractive generator);
3. a few QLoRA steps of the ``smollm2-135m-yarn16k`` recipe on that data;
4. the trained adapter evaluated with the RoPE spec it carries;
5. the three passkey runs (no scaling, dynamic YaRN, the adapter) compared side by side.

The corpus defaults to the essays in ``../shared/corpora/paul_graham_essays`` when present; otherwise
the documentation of Python's standard library (real English prose available offline everywhere) is
written to the output folder and used instead.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from data_builders.offline_corpus import default_corpus


def run_step(title: str, args: list[str]) -> None:
    """Print the command as a user would type it, run it, and stop the demo if it fails."""
    print(f"\n=== {title}\n$ longqa {shlex.join(args)}", flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "longqa", *args])
    if proc.returncode != 0:
        sys.exit(f"demo step failed ({title}), exit status {proc.returncode}")
    print(f"--- done in {time.time() - start:.0f}s", flush=True)


def demo_steps(
    out: Path, corpus: Path, *, trials: int = 3, length: int = 12288, train_steps: int = 3
) -> list[tuple[str, list[str]]]:
    """The demo as ``(title, longqa arguments)`` pairs, in order."""
    model = "smollm2-135m"
    passkey = ["eval", "passkey", "--model", model, "--lengths", str(length),
               "--trials", str(trials)]  # fmt: skip
    runs = {name: f"{out}/pk-{name}" for name in ("none", "dynamic-yarn", "adapter")}
    return [
        ("prepare the model (GGUF → cached HF folder, once)", ["models", "prepare", model]),
        (
            "passkey past the 8K window, no RoPE scaling",
            [*passkey, "--rope", "none", "--out", runs["none"]],
        ),
        (
            "passkey past the 8K window, dynamic YaRN",
            [*passkey, "--rope", "dynamic-yarn", "--out", runs["dynamic-yarn"]],
        ),
        (
            "build W-shaped paraphrase multi-document QA (offline extractive generator)",
            [
                "build-data",
                "--task",
                "paraphrase-mdqa",
                "--generator",
                "extractive",
                "--corpus",
                str(corpus),
                "--out",
                f"{out}/data",
                "--num-samples",
                "8",
                "--target-tokens",
                "1024",
                "--max-doc-tokens",
                "160",
                "--tokenizer",
                model,
                "--turns",
                "2",
                "--seed",
                "0",
            ],
        ),  # fmt: skip
        (
            "QLoRA on the W-shaped data (a few steps on CPU; samples fit the recipe's 1024 tokens)",
            [
                "train",
                "--recipe",
                "smollm2-135m-yarn16k",
                "--data",
                f"{out}/data",
                "--out",
                f"{out}/adapter",
                "--max-steps",
                str(train_steps),
            ],
        ),  # fmt: skip
        (
            "passkey with the trained adapter (its RoPE spec is read from the adapter)",
            [*passkey, "--adapter", f"{out}/adapter", "--out", runs["adapter"]],
        ),
        (
            "compare the three runs: no scaling, dynamic YaRN, trained adapter",
            ["eval", "compare", *runs.values()],
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--trials", type=int, default=3, help="passkey trials per length")
    parser.add_argument("--length", type=int, default=12288, help="passkey context length")
    parser.add_argument("--corpus", default=None, help="corpus folder for build-data")
    parser.add_argument("--train-steps", type=int, default=3)
    opts = parser.parse_args(argv)

    out = Path(opts.out)
    corpus = Path(opts.corpus) if opts.corpus else default_corpus(out)
    steps = demo_steps(
        out, corpus, trials=opts.trials, length=opts.length, train_steps=opts.train_steps
    )
    for title, args in steps:
        run_step(title, args)
    print(f"\nDemo finished; outputs in {out}/")


if __name__ == "__main__":
    main()
