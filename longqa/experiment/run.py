"""Run an experiment end to end: split, build, train, measure, evaluate, report — resumably.

Usage (what ``longqa experiment run`` does)::

    from longqa.experiment.run import run_experiment
    from longqa.experiment.schema import load_experiment
    from data_builders import ablation
    report = run_experiment(load_experiment("experiments/paraphrase-ablation.yaml"), "cpu",
                            Path("runs/exp"), datasets=ablation, resume=True)

Stages (each cached by a fingerprint of its inputs, see :mod:`longqa.experiment.stages`):
``split`` (train/eval source files), ``data/<arm>`` (paraphrase-mdqa builder), ``evaldata/*``
(held-out W-shaped QA, LongBench-format retrieval in two query variants), ``train/<arm>``
(:func:`longqa.train.trainer.run_training`), ``effective`` (``analyze effective-tokens`` on each
arm's data), ``eval/<arm>`` (:mod:`longqa.experiment.evals`), then the report. The data sets are
built by ``datasets`` (the CLI passes :mod:`data_builders.ablation`), so this layer imports no
builder itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json
from longqa.experiment.plan import make_plan
from longqa.experiment.schema import PROBES, Experiment, Profile
from longqa.experiment.split import (
    check_disjoint,
    clean_eval_side,
    materialize,
    source_files,
    split_corpus,
)
from longqa.experiment.stages import Stages


def arm_recipe(
    exp: Experiment, prof: Profile, data: Path, out: Path, steps: int | None = None
) -> Any:
    """The base recipe with the profile's model, RoPE spec and sizes, training on ``data``
    (``steps`` replaces the profile's for the token-matched control)."""
    from longqa.config.recipe import load_recipe, recipe_from_dict

    tree = load_recipe(exp.recipe).model_dump(mode="json")
    t = prof.train
    tree["model"].update(name=prof.model, quantization=t.quantization, dtype=t.dtype)
    tree["rope"] = prof.rope.model_dump(mode="json")
    tree["train"].update(
        lr=t.lr, micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum,
        max_length=t.max_length, seed=exp.seed, save_steps=t.save_steps, warmup_ratio=0.0,
        gradient_checkpointing=t.gradient_checkpointing,
        phases=[{"name": "sft", "kind": "sft", "steps": steps or t.steps,
                 "datasets": [{"path": str(data), "format": "messages"}]}],
    )  # fmt: skip
    tree["output"] = {"dir": str(out)}
    if prof.device == "cpu":
        tree["kernels"] = {**tree.get("kernels", {}), "rope": False}
    return recipe_from_dict(tree, f"{exp.source}: profiles.{exp.name}")


def _train(recipe: Any, folder: Path) -> dict[str, Any]:
    from longqa.train.metrics import read_log
    from longqa.train.phases import RunInputs
    from longqa.train.trainer import LOG_FILE, run_training

    run_training(recipe, RunInputs(out=str(folder)), resume=True)
    log = read_log(folder / LOG_FILE)
    losses = [r["loss"] for r in log]
    rates = [r["tokens_per_s"] for r in log if r.get("tokens_per_s")]
    return {
        "steps": log[-1]["step"] if log else 0,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        "tokens_per_s": sorted(rates)[len(rates) // 2] if rates else None,
    }


def _eval_arm(
    exp: Experiment, prof: Profile, arm: Any, adapter: Path | None, inputs: dict, folder: Path,
    progress: bool,
) -> dict[str, Any]:  # fmt: skip
    from longqa.experiment import evals
    from longqa.models.load import load

    model, tok, spec = load(
        prof.model,
        adapter=str(adapter) if adapter else None,
        rope=prof.rope,
        dtype=prof.train.dtype,
    )
    ev, out = prof.eval, {}
    if prof.device == "cuda":
        model.to("cuda")
    model.eval()
    for key in (k for k in exp.evals if k.startswith("probe")):
        from longqa.experiment.probe import eval_probe

        rows = eval_probe(model, tok, Path(inputs[key]), folder / key, n=ev.n,
                          max_new_tokens=ev.max_new_tokens, progress=progress)  # fmt: skip
        out[key] = [{k: v for k, v in r.items() if k != "doc_logprobs"} for r in rows]
    if "passage-retrieval" in exp.evals:
        for variant, file in inputs["retrieval"].items():
            rows = evals.eval_retrieval(model, tok, spec, Path(file), folder / f"pr-{variant}",
                                        max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                        progress=progress)  # fmt: skip
            out[f"pr-{variant}"] = [
                {k: r[k] for k in ("gold", "paragraphs", "choice", "choice_how", "longbench_score",
                                   "longbench_hit", "form_hit", "new_tokens")} for r in rows
            ]  # fmt: skip
    if "mdqa" in exp.evals:
        rows = evals.eval_mdqa(model, tok, spec, Path(inputs["mdqa"]), folder / "mdqa", n=ev.n,
                               max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                        progress=progress)  # fmt: skip
        keep = ("gold", "depth", "num_docs", "choice", "choice_how", "answer_hit", "doc_hit",
                "quote_exact", "quote_fuzzy", "new_tokens")  # fmt: skip
        out["mdqa"] = [{k: r[k] for k in keep} for r in rows]
    if "needle" in exp.evals:
        rows = evals.eval_needle(model, tok, spec, Path(inputs["haystack"]), folder / "needle", ev)
        out["needle"] = [{k: r[k] for k in ("length", "depth", "correct")} for r in rows]
    if "passkey" in exp.evals:
        rows = evals.eval_passkey(model, tok, spec, folder / "passkey", ev, exp.seed)
        out["passkey"] = [{k: r[k] for k in ("length", "depth", "correct")} for r in rows]
    return out


def run_experiment(
    exp: Experiment,
    profile: str,
    out: Path,
    *,
    datasets: Any,
    resume: bool = False,
    base_url: str | None = None,
    llm_model: str | None = None,
    console: Any = None,
    progress: bool = True,
    argv: list[str] | None = None,
    only: list[str] | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """Run (or continue) every stage of ``exp`` under ``out``; returns the report dict.

    ``datasets`` builds the data sets: ``mdqa_options``, ``build_arm_data``, ``build_mdqa_eval``
    and ``build_retrieval`` as in :mod:`data_builders.ablation`."""
    xdata = datasets
    from rich.console import Console

    from longqa.experiment.report import write_report

    console = console or Console(stderr=True)
    exp, prof = exp.for_profile(profile), exp.profile(profile)
    plan = make_plan(exp, profile)
    out = Path(out)
    stages = Stages(out, console, only=only)
    if stages.finished() and not resume:
        raise LongqaError(
            f"{out}: holds an earlier run; pass --resume to continue it or a new --out"
        )
    atomic_write_json(out / "plan.json", plan)
    corpus = exp.corpus_path()
    split = split_corpus(corpus, eval_fraction=exp.split.eval_fraction, seed=exp.split.seed,
                         min_files=exp.split.min_files, source=exp.source)  # fmt: skip
    files = [(str(p.relative_to(split.root)), p.stat().st_size) for p in source_files(corpus)]
    stages.run("split", {"files": files, "split": exp.split.model_dump()},
               lambda f: (materialize(split, f), split.as_json())[1])  # fmt: skip
    train_dir, eval_dir = out / "split" / "train", out / "split" / "eval"
    split_fp = stages.fingerprints["split"]
    cleaned = stages.run("clean", {"split": split_fp, "rule": "paragraphs+sentences"},
                         lambda f: clean_eval_side(train_dir, eval_dir))  # fmt: skip
    split_fp = stages.fingerprints["clean"]
    data_dirs, data_fps, data_res, steps = {}, {}, {}, {}
    trained = [a for a in exp.arms if a.form != "none"]
    for arm in sorted(trained, key=lambda a: a.match_tokens_of is not None):
        name = f"data/{arm.name}"
        samples = _matched_samples(exp, prof, arm, data_res)
        opts = xdata.mdqa_options(exp, prof, train_dir, out / name, answer_style=arm.form,
                                  **({"num_samples": samples} if samples else {}))  # fmt: skip
        spec = {"split": split_fp, "options": opts.model_dump(exclude={"out", "corpus"})}
        data_res[arm.name] = stages.run(
            name, spec,
            lambda f, a=arm, n=samples: xdata.build_arm_data(exp, prof, train_dir, f, a.form, n),
        )  # fmt: skip
        data_dirs[arm.name], data_fps[arm.name] = out / name, stages.fingerprints[name]
        t = prof.train
        steps[arm.name] = -(-t.steps * samples // t.samples) if samples else t.steps
    runtime = {"batch_size", "effective_samples", "max_new_tokens"}  # do not change the eval data
    ev_spec = {"split": split_fp, "eval": prof.eval.model_dump(exclude=runtime), "seed": exp.seed,
               "train": prof.train.model_dump(), "model": prof.model,
               "questions": exp.question_style}  # fmt: skip
    inputs: dict[str, Any] = {"retrieval": {}, "haystack": str(eval_dir)}
    probe_sets = {}
    for key in (k for k in exp.evals if k.startswith("probe")):
        folder_in, style = eval_dir, "prefix" if key == "probe-prefix" else exp.question_style
        if key == "probe-xcorpus":
            folder_in = xdata.cross_corpus(exp, out / "xcorpus")
        res = stages.run(f"evaldata/{key}", {**ev_spec, "style": style, "corpus": str(folder_in)},
                         lambda f, c=folder_in, st=style: xdata.build_mdqa_eval(
                             exp, prof, c, f, question_style=st))  # fmt: skip
        inputs[key], probe_sets[key] = res["file"], res
    if "mdqa" in exp.evals:
        stages.run("evaldata/mdqa", ev_spec,
                   lambda f: xdata.build_mdqa_eval(exp, prof, eval_dir, f))  # fmt: skip
        inputs["mdqa"] = str(out / "evaldata/mdqa")
    if "passage-retrieval" in exp.evals:
        for variant in exp.retrieval_variants:
            llm = {"base_url": base_url, "model": llm_model} if variant != "verbatim" else {}
            res = stages.run(f"evaldata/pr-{variant}", {**ev_spec, "llm": llm},
                             lambda f, v=variant: xdata.build_retrieval(
                                 exp, prof, eval_dir, f, variant=v, base_url=base_url,
                                 llm_model=llm_model))  # fmt: skip
            inputs["retrieval"][variant] = res["file"]
    _check_held_out(train_dir, inputs)
    train_res, adapters = {}, {}
    for arm in trained:
        name = f"train/{arm.name}"
        recipe = arm_recipe(exp, prof, data_dirs[arm.name], out / name, steps[arm.name])
        spec = {"recipe": recipe.model_dump(mode="json", exclude={"output": True}),
                "data": data_fps[arm.name]}  # fmt: skip
        spec["recipe"]["train"]["phases"][0]["datasets"] = [data_fps[arm.name]]
        res = stages.run(name, spec, lambda f, r=recipe: _train(r, f))
        if res is not None:
            train_res[arm.name] = {
                **res,
                "samples": data_res[arm.name]["samples"],
                "answer_tokens": data_res[arm.name].get("assistant_tokens"),
            }
            adapters[arm.name] = out / name
    effective = None
    if data_dirs and prof.eval.effective_samples:
        ins = {"data": data_fps, "model": prof.model, "n": prof.eval.effective_samples}
        effective = stages.run("effective", ins, lambda f: _effective(prof, data_dirs, f))
    evals: dict[str, Any] = {}
    partial_arms: dict[str, int] = {}
    for arm in exp.arms:
        adapter = adapters.get(arm.name)
        if arm.form != "none" and adapter is None:
            stages.defer(f"eval/{arm.name}")  # its training is not finished: a later piece
            continue
        train_fp = stages.fingerprints.get(f"train/{arm.name}")
        ins = {"eval": prof.eval.model_dump(exclude={"effective_samples"}), "data_spec": ev_spec,
               "evals": list(exp.evals), "train": train_fp,
               "rope": prof.rope.model_dump(), "data": {k: stages.fingerprints[f"evaldata/{k}"]
               for k in ["mdqa", *PROBES, *[f"pr-{v}" for v in exp.retrieval_variants]]
               if f"evaldata/{k}" in stages.fingerprints}}  # fmt: skip
        res = stages.run(
            f"eval/{arm.name}", ins,
            lambda f, a=arm, ad=adapter: _eval_arm(exp, prof, a, ad, inputs, f, progress),
        )  # fmt: skip
        if res is None and partial:
            res = _partial_rows(exp, out / f"eval/{arm.name}", inputs)
            if res:
                partial_arms[arm.name] = sum(len(v) for v in res.values())
        if res is not None:
            evals[arm.name] = res
    cmd = "longqa " + " ".join(argv if argv is not None else sys.argv[1:])
    if stages.deferred:
        console.print(f"piece finished; not run yet: {', '.join(stages.deferred)}", highlight=False)
    if any(k.startswith("probe") for k in exp.evals):  # a partial report lists what is missing
        from longqa.experiment.fair import write_fair_report

        return write_fair_report(out, exp, profile, stages=stages, train=train_res, data=data_res,
                                 probes=probe_sets, cleaned=cleaned, evals=evals, command=cmd,
                                 partial=partial_arms)  # fmt: skip
    if stages.deferred:
        return {"deferred": stages.deferred}
    return write_report(out, exp, profile, plan=plan, stages=stages, train=train_res,
                        effective=effective, evals=evals, command=cmd)  # fmt: skip


def _partial_rows(exp: Experiment, folder: Path, inputs: dict[str, Any]) -> dict[str, list]:
    """The probe rows an unfinished eval stage has written so far (``--partial`` reports)."""
    import json

    from longqa.experiment.probe import probe_keys

    out = {}
    for key in (k for k in exp.evals if k.startswith("probe")):
        path = folder / key / "results.jsonl"
        if path.is_file():  # read only: a running evaluation may still be appending
            wanted, rows = probe_keys(Path(inputs[key])), []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if row.get("key") in wanted:
                    rows.append(row)
            out[key] = [{k: v for k, v in r.items() if k != "doc_logprobs"} for r in rows]
    return {k: v for k, v in out.items() if v}


def _matched_samples(exp: Experiment, prof: Profile, arm: Any, data_res: dict) -> int | None:
    """Samples that give a token-matched arm as many answer tokens as its reference arm (from
    the answer tokens per sample of the unmatched arm of its form); None for other arms."""
    if arm.match_tokens_of is None:
        return None
    same = next(a for a in exp.arms if a.form == arm.form and a.match_tokens_of is None)
    ref, own = data_res[arm.match_tokens_of], data_res[same.name]
    per_sample = own["assistant_tokens"] / own["samples"]
    return -(-ref["assistant_tokens"] // max(1, round(per_sample)))


def _effective(prof: Profile, data_dirs: dict[str, Path], folder: Path) -> dict[str, Any]:
    from longqa.analyze.runner import analyze_effective_tokens

    rope = prof.rope if prof.rope.method != "none" else None
    report = analyze_effective_tokens(
        {k: str(v) for k, v in data_dirs.items()}, model=prof.model, out=folder, rope=rope,
        max_samples=prof.eval.effective_samples,
    )  # fmt: skip
    keys = ("samples", "tokens", "effective_share", "quote_effective_share",
            "answer_effective_share", "effective_in_quote")  # fmt: skip
    return {arm: {k: d["overall"].get(k) for k in keys} for arm, d in report["datasets"].items()}


def _check_held_out(train_dir: Path, inputs: dict[str, Any]) -> None:
    """No eval paragraph may come from a training file (raises naming the eval file and field)."""
    from longqa.core.paths import iter_jsonl
    from longqa.data.schema import read_samples
    from longqa.eval.attribution import split_numbered

    sets: dict[str, list[str]] = {}
    for file in inputs["retrieval"].values():
        sets[f"{file}: field 'context'"] = [
            p for _, r in iter_jsonl(file) for p in split_numbered(r["context"])
        ]
    for key in ("mdqa", *PROBES):  # probe files hold exactly the evaluated samples
        if key in inputs:
            texts = [s.messages[1].content for s in read_samples(inputs[key]) if s.messages]
            sets[f"{inputs[key]}: field 'messages'"] = [p for t in texts for p in split_numbered(t)]
    check_disjoint(train_dir, sets)
