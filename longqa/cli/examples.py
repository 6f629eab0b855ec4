"""One example per command, shown at the end of its ``--help``.

Usage (``longqa.cli.app`` does this once, after registering the commands)::

    from longqa.cli.examples import add_examples
    add_examples(app)

Kept in one table so that every command has one (``tests/test_cli_help.py`` checks it) and the
examples read alike; a command module adds its line here when it adds a command.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, str] = {
    "build-data": "longqa build-data --task paraphrase-mdqa --generator extractive "
    "--corpus docs/ --out data/x --seed 0",
    "train": "longqa train --recipe smollm2-135m-yarn16k --data data/x --max-steps 3 --out runs/a",
    "export": "longqa export --adapter runs/a --out runs/merged --merge",
    "generate": "longqa generate --model smollm2-135m --adapter runs/a --prompt-file long.txt",
    "doctor": "longqa doctor",
    "eval passkey": "longqa eval passkey --model smollm2-135m --rope dynamic-yarn "
    "--lengths 4096,12288 --out runs/pk",
    "eval needle": "longqa eval needle --model smollm2-135m --haystack essays/ "
    "--lengths 2000,4000 --depths 0,50,100",
    "eval passage-retrieval": "longqa eval passage-retrieval --model smollm2-135m "
    "--adapter runs/a --data pr_en.jsonl --out runs/pr",
    "eval perplexity": "longqa eval perplexity --model smollm2-135m --rope yarn --rope-factor 2 "
    "--data docs/ --lengths 2048,8192",
    "eval ruler": "longqa eval ruler --model smollm2-135m --rope dynamic-yarn "
    "--lengths 4096,8192 --tasks all --out runs/r",
    "eval harness": "longqa eval harness --model smollm2-135m --rope dynamic-yarn "
    "--tasks longqa_mdqa_choice --limit 20 --out runs/h",
    "eval compare": "longqa eval compare runs/pk-none runs/pk-yarn runs/pk-adapter",
    "data inspect": "longqa data inspect chat.jsonl --recipe smollm2-135m-yarn16k",
    "analyze effective-tokens": "longqa analyze effective-tokens --data data/x "
    "--compare data/x-plain --model smollm2-135m --out runs/eff",
    "analyze attention": "longqa analyze attention --data data/x --model smollm2-135m "
    "--adapter runs/a --out runs/attn",
    "recipes list": "longqa recipes list",
    "recipes show": "longqa recipes show qwen14b-yarn32k --set train.lr=1e-4",
    "rope methods": "longqa rope methods",
    "rope show": "longqa rope show --rope yarn --rope-factor 4 --rope-theta 10000 --head-dim 128",
    "models list": "longqa models list",
    "models prepare": "longqa models prepare smollm2-135m",
    "models convert": "longqa models convert /ckpt/Qwen-14B-Chat out/qwen14b",
    "experiment run": "longqa experiment run experiments/paraphrase-ablation.yaml --out runs/exp",
    "experiment pool": "longqa experiment pool runs/exp-s0 runs/exp-s1 runs/exp-s2 "
    "--out runs/pooled.md",
}


def _command_name(info: Any) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def add_examples(app: Any, prefix: str = "") -> None:
    """Set each registered command's epilog to ``Example: …`` from :data:`EXAMPLES`."""
    for info in app.registered_commands:
        path = (prefix + " " + _command_name(info)).strip()
        if path in EXAMPLES and not info.epilog:
            info.epilog = f"Example: {EXAMPLES[path]}"
    for group in app.registered_groups:
        add_examples(group.typer_instance, (prefix + " " + group.name).strip())
