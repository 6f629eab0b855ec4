"""The plan of an experiment run: stages, token counts and an estimated time (``--dry-run``).

Usage::

    plan = make_plan(exp, "cpu")          # {"stages": [...], "total_s": ..., "budget_s": ...}
    print_plan(plan, console)

Estimates use the profile's measured ``throughput`` (training, prefill and decode tokens per
second on its device) and upper bounds for generation (every answer runs to its budget), so a real
run is usually faster than planned.
"""

from __future__ import annotations

from typing import Any

from longqa.experiment.schema import Experiment


def make_plan(exp: Experiment, profile: str) -> dict[str, Any]:
    """Stages with token counts and estimated seconds for ``profile`` (nothing is built)."""
    exp, prof = exp.for_profile(profile), exp.profile(profile)
    t, ev, tp = prof.train, prof.eval, prof.throughput
    trained = [a for a in exp.arms if a.form != "none"]
    stages: list[dict[str, Any]] = []

    def add(name: str, tokens: int, seconds: float, detail: str) -> None:
        stages.append({"stage": name, "tokens": int(tokens), "seconds": round(seconds, 1),
                       "detail": detail})  # fmt: skip

    add("split", 0, 1, f"{exp.corpus}: {1 - exp.split.eval_fraction:.0%} of files train")
    for a in trained:
        add(f"data/{a.name}", 0, 5, f"{t.samples} samples × {t.target_tokens} tokens, {a.form}")
    probes = [k for k in exp.evals if k.startswith("probe")]
    add("evaldata", 0, 5 + 10 * len(probes), f"probe sets {probes or '—'} n={ev.n} each")
    per_step = t.micro_batch_size * t.grad_accum * min(t.target_tokens, t.max_length)
    for a in trained:
        steps = t.steps if a.match_tokens_of is None else -(-t.steps * MATCH_RATIO // 1)
        tokens = int(steps) * per_step
        what = f"{int(steps)} steps × {per_step} tokens, lr {t.lr}"
        if a.match_tokens_of:
            what += f" (token-matched to {a.match_tokens_of}: ~{MATCH_RATIO}× steps, estimated)"
        add(f"train/{a.name}", tokens, tp.load_s + tokens / tp.train_tokens_per_s, what)
    if ev.effective_samples:
        eff = len(trained) * ev.effective_samples * 2 * t.target_tokens
        add("effective", eff, tp.load_s + eff / tp.prefill_tokens_per_s, "effective-token share")
    prefill, decode = _eval_tokens(exp, ev)
    for a in exp.arms:
        seconds = tp.load_s + prefill / tp.prefill_tokens_per_s + decode / tp.decode_tokens_per_s
        add(f"eval/{a.name}", prefill + decode, seconds,
            f"{prefill:,} prompt + ≤{decode:,} new tokens")  # fmt: skip
    total = sum(s["seconds"] for s in stages)
    pieces = make_pieces(stages, prof.piece_minutes * 60) if prof.piece_minutes else []
    return {
        "experiment": exp.name,
        "profile": profile,
        "model": prof.model,
        "rope": prof.rope.model_dump(),
        "device": prof.device,
        "arms": [a.model_dump() for a in exp.arms],
        "evals": list(exp.evals),
        "stages": stages,
        "total_s": round(total, 1),
        "budget_s": prof.budget_minutes * 60,
        "pieces": pieces,
    }


# answer tokens per sample, paraphrase / index-detailed, in the cpu profile's seed-0 data (the
# token-matched control trains this many times the steps); the run computes the real ratio
MATCH_RATIO = 2.5


def make_pieces(stages: list[dict[str, Any]], limit_s: float) -> list[dict[str, Any]]:
    """Training/eval stages packed in order into pieces of at most ``limit_s`` estimated seconds
    (a stage longer than that is a piece of its own, resumable from its checkpoints)."""
    pieces: list[dict[str, Any]] = []
    for s in stages:
        if s["stage"].split("/")[0] not in ("train", "eval", "effective"):
            continue
        if pieces and pieces[-1]["seconds"] + s["seconds"] <= limit_s:
            pieces[-1]["stages"].append(s["stage"])
            pieces[-1]["seconds"] = round(pieces[-1]["seconds"] + s["seconds"], 1)
        else:
            pieces.append({"stages": [s["stage"]], "seconds": s["seconds"]})
    return pieces


def _eval_tokens(exp: Experiment, ev: Any) -> tuple[int, int]:
    """(prompt tokens, upper bound of new tokens) of one arm's evaluations."""
    prefill = decode = 0
    for _ in (k for k in exp.evals if k.startswith("probe")):
        prefill += ev.n * (ev.mdqa_target_tokens + 60)  # one prefill + the candidates' tokens
        decode += ev.n * ev.max_new_tokens
    if "passage-retrieval" in exp.evals:
        per = ev.pr_paragraphs * int(0.5 * ev.pr_max_words * 1.35) + 120
        prefill += len(exp.retrieval_variants) * ev.n * per
        decode += len(exp.retrieval_variants) * ev.n * ev.max_new_tokens
    if "mdqa" in exp.evals:
        prefill += ev.n * ev.mdqa_target_tokens
        decode += ev.n * ev.max_new_tokens
    if "needle" in exp.evals:
        prefill += sum(ev.needle_lengths) * len(ev.depths)
        decode += len(ev.needle_lengths) * len(ev.depths) * 48
    if "passkey" in exp.evals:
        prefill += sum(ev.passkey_lengths) * ev.passkey_trials
        decode += len(ev.passkey_lengths) * ev.passkey_trials * 8
    return prefill, decode


def print_plan(plan: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{plan['experiment']} [{plan['profile']}] on {plan['device']}")
    for col in ("stage", "tokens", "est. s", "what"):
        table.add_column(col, justify="right" if col in ("tokens", "est. s") else "left")
    for s in plan["stages"]:
        table.add_row(s["stage"], f"{s['tokens']:,}", f"{s['seconds']:.0f}", s["detail"])
    console.print(table)
    verdict = "within" if plan["total_s"] <= plan["budget_s"] else "OVER"
    for k, p in enumerate(plan.get("pieces", []), 1):
        only = " ".join(f"--only {n}" for n in p["stages"])
        console.print(f"piece {k} (~{p['seconds'] / 60:.1f} min): {only}", highlight=False)
    console.print(
        f"estimated total {plan['total_s'] / 60:.1f} min ({verdict} the profile's budget of "
        f"{plan['budget_s'] / 60:.0f} min); model {plan['model']}, rope {plan['rope']['method']}",
        highlight=False,
    )
