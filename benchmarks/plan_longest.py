"""The memory planner's longest trainable length on one GPU, switch by switch (no GPU needed).

Usage::

    .venv/bin/python benchmarks/plan_longest.py                 # the table of results/plan_longest.md
    .venv/bin/python benchmarks/plan_longest.py --gpu-mem 141 --out /tmp/h200.md

For ``llama3-8b-abf128k`` and ``qwen14b-yarn32k`` with their switches off, then added one by one
(tiled MLP with the loss chunk from memory, lean RMSNorm, lean LoRA dropout, the norm inside the
MLP's tiles, the bf16 residual stream): the planner's items at the recipe's length and its longest length that fits
(:func:`longqa.plan.memory.longest_fitting_length`). The same numbers as
``longqa train --recipe R --plan --gpu-mem 80 --set ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ON = ["kernels.chunked_ce=true", "kernels.rope=true", "memory.offload_activations=true"]
TILED = [*ON, "kernels.tiled_mlp=true", "train.loss_chunk_size=0"]
LEAN = [*TILED, "kernels.lean_rmsnorm=true"]
DROP = [*LEAN, "kernels.lean_lora_dropout=true"]
ROWS = [  # name, --set overrides (each on the recipe as shipped)
    ("MLP untiled", [*ON, "kernels.tiled_mlp=false", "kernels.lean_rmsnorm=false"]),
    ("+ tiled MLP, loss chunk from memory", [*TILED, "kernels.lean_rmsnorm=false"]),
    ("+ lean RMSNorm", LEAN),
    ("+ lean LoRA dropout", DROP),
    ("+ norm inside the MLP's tiles", [*DROP, "kernels.tiled_mlp_norm=true"]),
    ("+ bf16 residual stream (all)",
     [*DROP, "kernels.tiled_mlp_norm=true", "memory.bf16_residual=true"]),
    ("lean RMSNorm + bf16 residual stream (no lean dropout)", [*LEAN, "memory.bf16_residual=true"]),
]  # fmt: skip
RECIPES = ("llama3-8b-abf128k", "qwen14b-yarn32k")
FORWARD = "recompute's attention forward/backward, beyond"


def rows(gpu_mem: float) -> list[str]:
    from longqa.config.recipe import load_recipe, recipe_max_length
    from longqa.plan.memory import GB, estimate_bytes, longest_fitting_length, model_shape

    out = [
        "| recipe | switches | at its length | layer backward | MLP (tiled: one tile) | "
        "attention forward/backward beyond it | total | longest that fits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in RECIPES:
        for label, sets in ROWS:
            recipe = load_recipe(name, sets)
            shape, _ = model_shape(recipe)
            length = recipe_max_length(recipe)
            items = estimate_bytes(recipe, shape, length)
            mlp = items.get("MLP recompute", 0) + items.get("MLP recompute (tiled)", 0)
            longest = longest_fitting_length(recipe, shape, gpu_mem)
            out.append(
                f"| `{name}` | {label} | {length // 1024}K | {items['layer recompute'] / GB:.2f} GB"
                f" | {mlp / GB:.2f} GB | {items[FORWARD] / GB:.2f} GB | "
                f"{sum(items.values()) / GB:.1f} GB | ~{longest:,} |"
                if longest
                else f"| `{name}` | {label} | {length // 1024}K | | | | | below 1,024 |"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GPU memory in GB")
    p.add_argument("--out", default="-", help="a Markdown file to write, or - (print only)")
    a = p.parse_args(argv)
    text = (
        f"Planner, one {a.gpu_mem:g} GB GPU (`python benchmarks/plan_longest.py "
        f"--gpu-mem {a.gpu_mem:g}`):\n\n" + "\n".join(rows(a.gpu_mem)) + "\n"
    )
    if a.out != "-":
        Path(a.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
