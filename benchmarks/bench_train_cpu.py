"""CPU training: longqa's trainer vs plain transformers ``Trainer`` + peft, same data, back to back.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_train_cpu.py                  # 2K and 8K, fp32 + NF4
    .venv/bin/python benchmarks/bench_train_cpu.py --lengths 2048 --quant none --steps 3
    .venv/bin/python benchmarks/bench_train_cpu.py --variants "longqa,longqa tiled MLP" --lengths 8192

Both sides train SmolLM2-135M (the ``smollm2-135m-yarn16k`` recipe's model, YaRN factor 2) with
LoRA r=16, alpha 64, dropout 0.1 on all linear layers, gradient checkpointing (non-reentrant),
batch 1, AdamW (torch), on the same token rows: ``--lengths`` tokens of the essays corpus (random
tokens when it is absent), labels = inputs.

* ``plain``: ``AutoModelForCausalLM`` + ``peft.get_peft_model`` + ``transformers.Trainer`` (the
  model's own loss: full ``[T, vocab]`` logits).
* ``longqa``: :func:`longqa.train.model.build_trainable_model` + ``LongqaTrainer`` (chunked loss,
  trainable norms, the CPU allocator setting of ``runtime_for``) — the recipe as shipped; the other
  ``longqa …`` variants change one setting (see ``VARIANTS``).

Every (variant, length, quantization) runs in its own subprocess, and the variants of one cell run
back to back, so CPU load from other work affects them alike; only ratios to ``plain`` are
reported. Time per step is the median of the steps after the first, as wall time and as the
process's CPU time (user + system, all threads: less sensitive to other load on a shared machine,
and it includes the kernel's page-zeroing of fresh allocations); peak RSS is ``VmHWM`` reset
(``/proc/self/clear_refs``) after the model is built, i.e. the training steps' peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = "smollm2-135m-yarn16k"
VARIANTS = {  # name -> recipe overrides / runtime switches for the longqa trainer
    "plain": None,
    "longqa": [],
    "longqa tiled MLP": ["kernels.tiled_mlp=true"],
    "longqa lean dropout": ["kernels.lean_lora_dropout=true"],
    "longqa no norms": ["lora.trainable_norms=false"],
    "longqa full logits": ["kernels.chunked_ce=false"],
    "longqa glibc default": ["memory.cpu_return_freed=false"],  # no fixed mmap threshold
    "longqa return freed": ["memory.cpu_return_freed=true"],  # whatever the length
    "longqa 4k pages": ["memory.cpu_return_freed=true"],  # started without the huge-pages tunable
}


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def token_rows(tokenizer, length: int, n: int) -> list[list[int]]:  # noqa: ANN001
    """``n`` rows of ``length`` tokens of the essays corpus (or random tokens without it)."""
    from longqa.core.paths import shared_essays

    root = shared_essays() or Path("/work/shared/corpora/paul_graham_essays")
    ids: list[int] = []
    if root.is_dir():
        for f in sorted(root.glob("*.txt")):
            ids += tokenizer(f.read_text(), add_special_tokens=False)["input_ids"]
            if len(ids) >= n * length:
                break
    if len(ids) < n * length:
        import random

        rng = random.Random(0)
        ids = [rng.randrange(len(tokenizer)) for _ in range(n * length)]
    return [ids[i * length : (i + 1) * length] for i in range(n)]


class _StepTimer:
    """Wall and process CPU seconds (all threads, user + system) of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._t = self._c = 0.0

    def callback(self):  # noqa: ANN201
        from transformers import TrainerCallback

        timer = self

        class Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
                timer._t, timer._c = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
                timer.times.append(time.perf_counter() - timer._t)
                timer.cpu.append(time.process_time() - timer._c)

        return Cb()


def worker(variant: str, length: int, quant: str, steps: int, out_dir: str, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import TrainingArguments

    from longqa.config.recipe import load_recipe
    from longqa.models.checkpoints import load_tokenizer, resolve_for_loading
    from longqa.train.model import build_trainable_model, runtime_for

    torch.manual_seed(0)
    overrides = [f"train.max_length={length}", f"model.quantization={quant}", "model.dtype=float32"]
    overrides += VARIANTS[variant] or []
    recipe = load_recipe(RECIPE, overrides=overrides)
    tok = load_tokenizer(recipe.model.name)
    rows = [{"input_ids": r, "labels": list(r)} for r in token_rows(tok, length, steps)]
    timer = _StepTimer()
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=1, gradient_accumulation_steps=1,
        learning_rate=1e-4, max_steps=steps, save_strategy="no", logging_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
        optim="adamw_torch", seed=0, dataloader_pin_memory=False,
        gradient_checkpointing=False,  # both sides enable it on the model themselves
    )  # fmt: skip
    if variant == "plain":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, Trainer, default_data_collator

        from longqa.patch.rope import apply_rope_scaling

        kw = {}
        if quant == "nf4":
            from longqa.models.load import nf4_config

            kw["quantization_config"] = nf4_config(recipe.model.double_quant)
        model = AutoModelForCausalLM.from_pretrained(
            resolve_for_loading(recipe.model.name), dtype=torch.float32, **kw
        )
        model = apply_rope_scaling(model, recipe.rope)
        model.config.use_cache = False
        if quant == "nf4":
            import bitsandbytes as bnb
            from peft import prepare_model_for_kbit_training

            for m in model.modules():  # float32 compute, as longqa's CPU runtime sets it
                if isinstance(m, bnb.nn.Linear4bit):
                    m.compute_dtype, m.compute_type_is_set = torch.float32, True

            model = prepare_model_for_kbit_training(
                model, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        lc = recipe.lora
        cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                         target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, cfg)
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=default_data_collator)  # fmt: skip
    else:
        from longqa.train.packing import PaddedCollator
        from longqa.train.trainer import LongqaTrainer

        model, _ = build_trainable_model(recipe, runtime_for(recipe, "cpu"))
        trainer = LongqaTrainer(
            model=model, args=args, train_dataset=rows, data_collator=PaddedCollator(0),
            loss_chunk_size=recipe.train.loss_chunk_size, chunked=recipe.kernels.chunked_ce,
        )  # fmt: skip
    trainer.add_callback(timer.callback())
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    base_kb = _vm_kb("VmRSS")
    trainer.train()
    timed = timer.times[1:] or timer.times
    cpu = timer.cpu[1:] or timer.cpu
    return {
        "variant": variant, "length": length, "quant": quant, "steps": len(timer.times),
        "s_per_step": statistics.median(timed), "step_times": timer.times,
        "cpu_s_per_step": statistics.median(cpu), "step_cpu": timer.cpu,
        "peak_rss_gb": _vm_kb("VmHWM") / 2**20, "rss_before_gb": base_kb / 2**20,
    }  # fmt: skip


def worker_env(variant: str) -> dict[str, str]:
    """The worker's environment: ``longqa train`` restarts itself on CPU with glibc's huge-pages
    tunable where it is supported (``longqa.train.cpu_memory``), so the longqa variants start with
    it as well; ``plain`` and ``longqa 4k pages`` start without it."""
    from longqa.train.cpu_memory import HUGE_PAGES_TUNABLE, huge_pages_supported, with_huge_pages

    env = os.environ.copy()
    tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t != HUGE_PAGES_TUNABLE]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    if variant.startswith("longqa") and variant != "longqa 4k pages" and huge_pages_supported():
        env = with_huge_pages(env)
    return env


def run_cell(variant: str, length: int, quant: str, steps: int, threads: int = 0) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", variant, "--lengths", str(length),
               "--quant", quant, "--steps", str(steps), "--tmp", tmp,
               "--threads", str(threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(variant))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"variant": variant, "length": length, "quant": quant, "error": " / ".join(tail)}
    result = json.loads(lines[-1])
    result["glibc_tunables"] = worker_env(variant).get("GLIBC_TUNABLES", "")
    return result


def markdown(results: list[dict], command: str) -> str:
    head = [
        "## CPU training: longqa vs transformers Trainer + peft (SmolLM2-135M, LoRA r16 all-linear)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared with other work; ratios only, each cell's variants run back to back)",
        "",
        "| length | weights | variant | wall time/step vs plain | CPU time/step vs plain "
        "| peak RSS vs plain | steps timed |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    cells = sorted({(r["length"], r["quant"]) for r in results}, key=lambda c: (c[0], c[1]))
    for length, quant in cells:
        runs = [r for r in results if r["length"] == length and r["quant"] == quant]
        base = [r for r in runs if r["variant"] == "plain" and "error" not in r]
        for variant in dict.fromkeys(r["variant"] for r in runs if r["variant"] != "plain"):
            mine = [r for r in runs if r["variant"] == variant]
            failed = [r for r in mine if "error" in r]
            if failed or not base:
                err = failed[0]["error"] if failed else "no plain run"
                rows.append(f"| {length} | {quant} | {variant} | failed: {err} | | | |")
                continue
            pairs = list(zip(mine, base, strict=False))  # repeat i of the variant vs of plain
            t = statistics.median(r["s_per_step"] / b["s_per_step"] for r, b in pairs)
            c = statistics.median(r["cpu_s_per_step"] / b["cpu_s_per_step"] for r, b in pairs)
            m = statistics.median(r["peak_rss_gb"] / b["peak_rss_gb"] for r, b in pairs)
            steps = sum(max(r["steps"] - 1, 1) for r in mine)
            rows.append(
                f"| {length} | {quant} | {variant} | {t:.2f}× | {c:.2f}× | {m:.2f}× | "
                f"{steps} ({len(pairs)} run{'s' if len(pairs) > 1 else ''}) |"
            )
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048,8192")
    p.add_argument("--quant", default="none,nf4", help="comma list of none / nf4")
    p.add_argument("--variants", default="plain,longqa,longqa tiled MLP")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (first untimed)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per run (0 = torch's default; 1 = CPU time least "
        "disturbed by other load)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each cell's variants this many times, alternating; ratios use the median",
    )
    p.add_argument("--out", default=str(RESULTS / "train_cpu.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, int(a.lengths), a.quant, a.steps, a.tmp, a.threads)))
        return 0
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
        return 2
    if "plain" not in variants:
        variants.insert(0, "plain")
    command = "python benchmarks/bench_train_cpu.py " + " ".join(
        f'"{x}"' if " " in x else x for x in (argv if argv is not None else sys.argv[1:])
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for length in [int(x) for x in a.lengths.split(",")]:
        for quant in a.quant.split(","):
            for repeat in range(a.repeats):
                for v in variants:
                    r = run_cell(v, length, quant, a.steps, a.threads)
                    r["repeat"] = repeat
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    out.write_text(markdown(results, command.strip()))  # as it goes
                    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
