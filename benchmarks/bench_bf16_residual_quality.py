"""Does ``memory.bf16_residual`` change what QLoRA training learns? A CPU run with real weights.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_bf16_residual_quality.py            # the table
    .venv/bin/python benchmarks/bench_bf16_residual_quality.py --steps 2 --eval-rows 2 --tokens 128

SmolLM2-135M (the ``smollm2-135m-yarn16k`` recipe as shipped: NF4 weights, LoRA r16 alpha 64
dropout 0.1 on every linear plus trained norms, gradient checkpointing, chunked loss) is trained
under bf16 autocast, as on a GPU (this CPU has bf16 matmul units; ``longqa train`` itself trains in
fp32 on CPU, where the switch does nothing), on rows of ``--tokens`` tokens of the essays corpus,
language-model loss, AdamW, ``--steps`` steps at batch 1. Three arms, each a fresh model:

* ``fp32 stream`` — peft's ``prepare_model_for_kbit_training`` as usual (fp32 residual stream);
* ``fp32 stream, seed 1`` — the same with another seed (LoRA initialisation and dropout; the rows
  come in the same order in every arm): the run-to-run spread a numerics change is compared with;
* ``bf16 stream`` — ``memory.bf16_residual: true``, seed 0 like the first arm.

Held-out loss is measured on ``--eval-rows`` rows from essays no training row comes from (the
corpus is split by file), each arm in its own numerics, before (base) and after training. Paired
per-row differences get a seeded bootstrap 95 % interval (:func:`longqa.experiment.stats.mean_interval`).
Writes ``results/bf16_residual_quality.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = "smollm2-135m-yarn16k"
ARMS = {  # name -> (seed, recipe overrides)
    "fp32 stream": (0, []),
    "fp32 stream, seed 1": (1, []),
    "bf16 stream": (0, ["memory.bf16_residual=true"]),
}


def essay_rows(tokenizer, length: int, n_train: int, n_eval: int) -> tuple[list, list]:  # noqa: ANN001
    """Training rows from the first essays, held-out rows from later ones (split by file)."""
    from longqa.core.paths import shared_essays

    root = shared_essays()
    if root is None:
        raise SystemExit("bf16_residual_quality: needs the essays corpus (../shared/corpora)")
    files = sorted(root.glob("*.txt"))
    cut = len(files) * 3 // 4  # the last quarter of the files is held out

    def rows(paths: list[Path], n: int) -> list[list[int]]:
        out: list[list[int]] = []
        for f in paths:
            ids = tokenizer(f.read_text(), add_special_tokens=False)["input_ids"]
            out += [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
            if len(out) >= n:
                return out[:n]
        raise SystemExit(
            f"bf16_residual_quality: only {len(out)} rows of {length} tokens, need {n}"
        )

    return rows(files[:cut], n_train), rows(files[cut:], n_eval)


def build(overrides: list[str], seed: int):  # noqa: ANN201
    from longqa.config.recipe import load_recipe
    from longqa.train.model import Runtime, build_trainable_model

    recipe = load_recipe(RECIPE, overrides=["model.dtype=bfloat16", *overrides])
    torch.manual_seed(seed)
    model, notes = build_trainable_model(recipe, Runtime("cpu", "bfloat16", "nf4", "adamw_torch"))
    return recipe, model, notes


def row_losses(model, rows: list[list[int]], chunk: int) -> list[float]:  # noqa: ANN001
    """Token-mean loss of each row, in the model's own numerics (bf16 autocast)."""
    from longqa.ops.causal_lm import causal_lm_loss

    model.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for r in rows:
            ids = torch.tensor([r])
            total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk_size=chunk)
            out.append(float(total / n))
    model.train()
    return out


def run_arm(name: str, train: list, held: list, args: argparse.Namespace) -> dict:
    from longqa.ops.causal_lm import causal_lm_loss

    seed, overrides = ARMS[name]
    recipe, model, notes = build(overrides, seed)
    chunk = recipe.train.loss_chunk_size
    base = row_losses(model, held, chunk)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    losses, norms, t0 = [], [], time.perf_counter()
    for step in range(args.steps):
        ids = torch.tensor([train[order[step % len(train)]]])
        for g in opt.param_groups:  # linear warmup over the first tenth, then constant
            g["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.steps // 10))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk_size=chunk)
        loss = total / n
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        print(f"  {name} step {step + 1}/{args.steps} loss {losses[-1]:.4f}", flush=True)
    after = row_losses(model, held, chunk)
    return {
        "arm": name, "seed": seed, "overrides": overrides, "notes": notes,
        "train_loss": losses, "grad_norm": norms, "base": base, "after": after,
        "s_per_step": (time.perf_counter() - t0) / max(1, args.steps),
    }  # fmt: skip


def paired(a: list[float], b: list[float]) -> dict:
    from longqa.experiment.stats import mean_interval

    return mean_interval([x - y for x, y in zip(a, b, strict=True)])


def markdown(res: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    from longqa.experiment.stats import fmt, mean_interval

    ref, seed1, bf16 = (res[k] for k in ARMS)
    n = len(ref["after"])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    lines = [
        "## Does the bf16 residual stream change what QLoRA training learns? (CPU, real weights)",
        "",
        f"Command: `{command}` (`torch {torch.__version__}`, bf16 autocast on CPU).",
        "",
        f"SmolLM2-135M as `{RECIPE}` ships it (NF4, LoRA r16/alpha 64/dropout 0.1 on every linear,"
        f" trained norms, checkpointing, chunked loss), {args.steps} steps of one {args.tokens}-token"
        f" essay row, AdamW lr {args.lr:g}; held-out loss on n = {n} rows of {args.tokens} tokens"
        " from essays no training row comes from. Intervals: seeded bootstrap 95 % of the mean"
        " of paired per-row differences.",
        "",
        "| arm | held-out loss, base | after training | improvement (base − after) |",
        "|---|---|---|---|",
    ]
    for r in res.values():
        imp = mean_interval([b - a for b, a in zip(r["base"], r["after"], strict=True)])
        lines.append(
            f"| {r['arm']} | {mean(r['base']):.4f} | {mean(r['after']):.4f} | {fmt(imp, 4)} |"
        )
    d_bf16 = paired(bf16["after"], ref["after"])
    d_seed = paired(seed1["after"], ref["after"])
    d_base = paired(bf16["base"], ref["base"])
    curve = [abs(a - b) for a, b in zip(bf16["train_loss"], ref["train_loss"], strict=True)]
    curve_seed = [abs(a - b) for a, b in zip(seed1["train_loss"], ref["train_loss"], strict=True)]
    lines += [
        "",
        "| paired difference of held-out loss (per row) | mean [95 % interval] |",
        "|---|---|",
        f"| base model: bf16 stream − fp32 stream (numerics alone) | {fmt(d_base, 4)} |",
        f"| trained: bf16 stream − fp32 stream (same seed) | {fmt(d_bf16, 4)} |",
        f"| trained: fp32 seed 1 − fp32 seed 0 (run-to-run spread) | {fmt(d_seed, 4)} |",
        "",
        f"Training loss, mean |difference| per step from the fp32 stream (seed 0): bf16 stream"
        f" {mean(curve):.4f} (max {max(curve):.4f}); fp32 seed 1 {mean(curve_seed):.4f}"
        f" (max {max(curve_seed):.4f}). Final grad norms: "
        + ", ".join(f"{r['arm']} {r['grad_norm'][-1]:.3f}" for r in res.values())
        + ". Seconds per step (a loaded shared machine; not a speed result): "
        + ", ".join(f"{r['arm']} {r['s_per_step']:.1f}" for r in res.values())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "bf16_residual_quality.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from longqa.models.checkpoints import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    train, held = essay_rows(tok, args.tokens, args.steps, args.eval_rows)
    res = {}
    for name in ARMS:
        print(f"arm: {name}", flush=True)
        res[name] = run_arm(name, train, held, args)
        if not all(math.isfinite(x) for x in res[name]["train_loss"]):
            raise SystemExit(f"bf16_residual_quality: {name} diverged")
    command = "python benchmarks/bench_bf16_residual_quality.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(res, args, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
