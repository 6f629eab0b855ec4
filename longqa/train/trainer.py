"""`longqa train`: run a recipe's training phases with ``transformers.Trainer``.

Usage::

    from longqa.config.recipe import load_recipe
    from longqa.train.trainer import run_training
    from longqa.train.phases import RunInputs
    inputs = RunInputs(data=["runs/data"], max_steps=3)
    adapter_dir = run_training(load_recipe("smollm2-135m-yarn16k"), inputs)

Each phase (``pretrain``: causal LM on raw text; ``sft``: loss on assistant tokens only) trains the
same LoRA adapter, starting from the previous phase's weights. Outputs under the recipe's output
dir: ``<phase>/checkpoint-N`` (every ``train.save_steps`` steps, optimizer + RNG + data position),
``<phase>/adapter`` (bundle when the phase ends), ``train_log.jsonl``, and the final bundle in
the output dir itself (so ``--adapter <out>`` loads it). ``resume=True`` skips finished phases and continues the
current one from its last checkpoint with the same data order (the Trainer's seeded sampler skips
the batches it already consumed).

The run holds the output folder's lock (:mod:`longqa.core.folder_lock`); Ctrl-C or SIGTERM on any
rank stops every rank at the next step end with that step's checkpoint saved, and a checkpoint is
checked before it is resumed from (:mod:`longqa.train.stopping`).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer

from longqa.config.recipe import PhaseConfig, Recipe, dump_recipe
from longqa.core.errors import LongqaError
from longqa.core.faults import write_failed, writing
from longqa.core.folder_lock import output_lock
from longqa.core.interrupt import check_stop, graceful
from longqa.core.paths import atomic_write_text
from longqa.models.adapters import is_adapter_dir, read_adapter_info, save_adapter_bundle
from longqa.ops.causal_lm import causal_lm_loss
from longqa.patch.rope import sample_lengths_for
from longqa.train.distributed import (
    barrier,
    dist_info,
    full_trainable_state,
    sequence_parallel_size,
    weights_sharded,
)
from longqa.train.phases import (
    RunInputs,
    build_phase_dataset,
    describe_phase_data,
    describe_run,
    prepare_recipe,
)
from longqa.train.stopping import (
    StopOnSignal,
    drop_log_rows_after,
    resumable_checkpoint,
    save_checkpoint_safely,
)

LOG_FILE = "train_log.jsonl"
SKIPPED_FILE = "skipped_rows.txt"  # every row --skip-bad-rows skipped: "<file:line>: <why>"


class LongqaTrainer(Trainer):
    """``Trainer`` whose loss is the chunked causal-LM loss, token-weighted over each optimizer
    step: ``sum of token losses / number of label tokens in all micro-batches of the step``.
    A batch's ``sample_lengths`` (packed rows split over GPUs) is popped from the model inputs
    and handed to the RoPE patch's rotary modules for the forward (``sample_lengths_for``)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_chunk_size: int = 4096, chunked: bool = True, **kw: Any):
        super().__init__(*args, **kw)
        self.loss_chunk_size = loss_chunk_size
        self.chunked = chunked
        self.tokens_seen = 0
        # Make the Trainer count label tokens across the accumulation window (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> Any:
        """The step's label-token count. DeepSpeed's sequence-parallel data adapter hands each rank
        a piece of a row with pre-shifted ``shift_labels`` and no ``labels``, which the Trainer
        does not count (each rank's loss would then be its own piece's mean, pieces weighted
        alike whatever their scored tokens): counted here, summed over every rank (the pieces of
        a row are disjoint: each token once; unlike the Trainer, not divided by the split)."""
        first = batch_samples[0] if batch_samples else {}
        if "labels" in first or "shift_labels" not in first:
            return super()._get_num_items_in_batch(batch_samples, device)
        n = sum(b["shift_labels"].ne(-100).sum() for b in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        # a sequence-parallel piece's sample lengths (from the whole row) go to the rotary
        # modules, never to the model's forward (see longqa.train.distributed)
        lengths = inputs.get("sample_lengths")
        if lengths is not None:
            inputs = {k: v for k, v in inputs.items() if k != "sample_lengths"}
        with sample_lengths_for(model, lengths):
            total, n = causal_lm_loss(
                model, inputs, chunk_size=self.loss_chunk_size, chunked=self.chunked
            )
        if "attention_mask" in inputs:
            self.tokens_seen += int(inputs["attention_mask"].sum())
        else:
            self.tokens_seen += int(inputs["input_ids"].numel())
        denom = num_items_in_batch if (num_items_in_batch is not None and model.training) else n
        loss = total / max(int(denom), 1)
        if (
            model.training
            and num_items_in_batch is not None
            and self.args.average_tokens_across_devices
        ):
            # num_items_in_batch counts the label tokens of every rank; DDP (DeepSpeed: over all
            # ranks, sequence-parallel ones included) then averages the gradients over ranks, so
            # scale back up as Trainer.compute_loss does. The logged loss, the ranks' mean, is
            # then the step's token-weighted mean.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _save_checkpoint(self, model, trial):  # noqa: ANN001
        """The Trainer's checkpoint, written whole or not at all (``longqa.train.stopping``)."""
        save_checkpoint_safely(self, super()._save_checkpoint, model, trial)


def training_arguments(recipe: Recipe, phase: PhaseConfig, out_dir: Path, rt: Any) -> Any:
    from transformers import TrainingArguments

    tc = recipe.train
    has_tb = importlib.util.find_spec("tensorboard") is not None
    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=tc.micro_batch_size,
        gradient_accumulation_steps=tc.grad_accum,
        learning_rate=phase.lr or tc.lr,
        lr_scheduler_type=tc.schedule,
        warmup_steps=tc.warmup_ratio if tc.warmup_ratio < 1 else 0,
        weight_decay=tc.weight_decay,
        max_grad_norm=tc.max_grad_norm,
        optim=rt.optim,
        max_steps=phase.steps or -1,
        num_train_epochs=phase.epochs or 1.0,
        save_strategy="steps",
        save_steps=tc.save_steps,
        save_total_limit=2,
        logging_steps=tc.logging_steps,
        seed=tc.seed,
        data_seed=tc.seed,
        bf16=rt.on_cuda and rt.dtype == "bfloat16",
        fp16=rt.on_cuda and rt.dtype == "float16",
        use_cpu=not rt.on_cuda,
        report_to=["tensorboard"] if has_tb else "none",
        remove_unused_columns=False,
        train_sampling_strategy=(
            "group_by_length"
            if recipe.data.group_by_length and not recipe.data.packing and tc.micro_batch_size > 1
            else "random"
        ),
        disable_tqdm=True,
        dataloader_pin_memory=rt.on_cuda,
        dataloader_num_workers=0,
    )


def _phase_done(adapter: Path) -> bool:
    return is_adapter_dir(adapter) and bool(read_adapter_info(adapter).get("complete"))


# ---------------------------------------------------------------- the run


def run_training(
    recipe: Recipe,
    inputs: RunInputs | None = None,
    *,
    resume: bool = False,
    resume_from_previous: bool = False,
    skip_bad_rows: bool = False,
    console: Any = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train every phase of ``recipe`` with a run's ``inputs`` (:class:`RunInputs`: ``--data``,
    ``--pretrain-data``, ``--out``, ``--max-steps``, …) applied; return the final adapter folder.
    ``skip_bad_rows`` skips bad rows, counts them in the summary and lists each one in
    ``skipped_rows.txt`` in the run folder.
    ``resume_from_previous`` (implies ``resume``) sets an incomplete newest checkpoint aside and
    resumes from the one before."""
    recipe, notes = prepare_recipe(recipe, inputs)
    with output_lock(recipe.output_dir), graceful():
        return _run_phases(
            recipe,
            notes,
            resume=resume or resume_from_previous,
            resume_from_previous=resume_from_previous,
            skip_bad_rows=skip_bad_rows,
            console=console,
            callbacks=callbacks,
        )


def _run_phases(
    recipe: Recipe,
    notes: list[str],
    *,
    resume: bool,
    resume_from_previous: bool,
    skip_bad_rows: bool,
    console: Any,
    callbacks: Sequence[Any],
) -> Path:
    from rich.console import Console
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from longqa.models.checkpoints import load_tokenizer
    from longqa.train.metrics import MetricsCallback
    from longqa.train.model import build_trainable_model, runtime_for

    rank = dist_info()
    console = console or Console(stderr=True)
    if not rank.is_main:  # one console, one log, one adapter: rank 0 speaks and writes
        console = Console(stderr=True, quiet=True)
    out_dir = recipe.output_dir
    if rank.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.yaml", dump_recipe(recipe))
    rt = runtime_for(recipe)
    console.print(describe_run(recipe, rank.world_size, sequence_parallel_size()), highlight=False)
    for n in [*notes, *rt.notices]:
        console.print(f"[yellow]notice:[/] {n}", highlight=False)
    tokenizer = load_tokenizer(
        recipe.model.name,
        layout=recipe.model.layout,
        trust_remote_code=recipe.model.trust_remote_code,
    )
    model = None
    prev_adapter: Path | None = None
    skipped_rows: Counter = Counter()
    skips: list[str] = []
    probes = _eval_callback(recipe, tokenizer, out_dir, console)
    for phase in recipe.train.phases:
        check_stop()
        phase_dir = out_dir / phase.name
        adapter = phase_dir / "adapter"
        if resume and _phase_done(adapter):
            console.print(f"phase {phase.name}: already finished, skipping", highlight=False)
            prev_adapter, model = adapter, None
            continue
        checkpoint = get_last_checkpoint(str(phase_dir)) if phase_dir.is_dir() else None
        if checkpoint and resume:
            checkpoint = _checked_checkpoint(phase_dir, resume_from_previous, console)
        if checkpoint and not resume:
            console.print(
                f"[yellow]notice:[/] {phase_dir} has checkpoints; starting over (use --resume "
                "to continue)",
                highlight=False,
            )
            if rank.is_main:
                shutil.rmtree(phase_dir)
            barrier()
            checkpoint = None
        dataset, collator, stats = build_phase_dataset(
            recipe, phase, tokenizer, skip_bad_rows=skip_bad_rows
        )
        for line in describe_phase_data(phase, stats, len(dataset)):
            console.print(line, highlight=False)
        for n in stats.notes:
            console.print(f"[yellow]notice:[/] {n}", highlight=False)
        skipped_rows.update(stats.skipped_rows)
        skips += stats.skips
        if model is None:
            set_seed(recipe.train.seed)  # LoRA init is random: same seed, same adapter
            model, model_notes = build_trainable_model(recipe, rt, start_adapter=prev_adapter)
            for n in model_notes:
                console.print(f"  {n}", highlight=False)
        trainer = LongqaTrainer(
            model=model,
            args=training_arguments(recipe, phase, phase_dir, rt),
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
            loss_chunk_size=recipe.train.loss_chunk_size,
            chunked=recipe.kernels.chunked_ce,
        )
        trainer.remove_callback(PrinterCallback)  # our MetricsCallback prints instead
        metrics = MetricsCallback(out_dir / LOG_FILE, phase.name, console)
        metrics.bind(trainer)
        trainer.add_callback(metrics)
        for cb in callbacks:
            trainer.add_callback(cb)
        if probes is not None:
            probes.phase = phase.name
            trainer.add_callback(probes)
        stop = StopOnSignal()
        trainer.add_callback(stop)
        if checkpoint:
            console.print(f"phase {phase.name}: resuming from {checkpoint}", highlight=False)
            if rank.is_main:  # steps past the checkpoint are trained (and logged) again
                step = int(Path(checkpoint).name.rsplit("-", 1)[1])
                drop_log_rows_after(out_dir / LOG_FILE, phase.name, step)
        trainer.train(resume_from_checkpoint=checkpoint)
        stop.raise_if_stopped()  # every rank, after the step's checkpoint
        state = full_trainable_state(trainer.model)  # every rank: FSDP2 gathers the shards
        if rank.is_main:
            _save_adapter(
                trainer.accelerator.unwrap_model(model), tokenizer, recipe, adapter,
                state_dict=state, phase=phase.name, steps=trainer.state.global_step, complete=True,
                **(probes.bundle_info() if probes is not None else {}),
            )  # fmt: skip
        barrier()  # the next phase (every rank) starts from this adapter
        console.print(f"phase {phase.name}: adapter saved to {adapter}", highlight=False)
        prev_adapter = adapter
        if weights_sharded():  # FSDP/ZeRO-3 cannot wrap their own wrapped model again: reload
            model = None
    if prev_adapter is None:
        raise LongqaError(f"recipe '{recipe.name}': no phases to train")
    final = out_dir  # the output dir itself is the final adapter bundle
    if rank.is_main:
        for f in prev_adapter.iterdir():
            if f.is_file():
                with writing(final / f.name):
                    shutil.copy2(f, final / f.name)
    barrier()
    if skipped_rows:
        why = ", ".join(f"{k} {v}" for k, v in sorted(skipped_rows.items()))
        listed = ""
        if rank.is_main and skips:
            atomic_write_text(out_dir / SKIPPED_FILE, "".join(f"{line}\n" for line in skips))
            listed = f"; every one listed in {out_dir / SKIPPED_FILE}"
        console.print(
            f"[yellow]bad rows skipped:[/] {sum(skipped_rows.values())} ({why}){listed}",
            highlight=False,
        )
    console.print(f"[green]done:[/] adapter in {final}", highlight=False)
    return final


def _checked_checkpoint(phase_dir: Path, previous: bool, console: Any) -> str | None:
    """The checkpoint to resume from, checked (rank 0 first: it sets an incomplete one aside)."""

    def say(line: str) -> None:
        console.print(f"[yellow]{line}[/]", highlight=False)

    main = dist_info().is_main
    checkpoint = resumable_checkpoint(phase_dir, previous, say) if main else None
    barrier()
    if not main:
        checkpoint = resumable_checkpoint(phase_dir, previous, lambda line: None)
    return checkpoint


def _save_adapter(model: Any, tokenizer: Any, recipe: Recipe, adapter: Path, **kw: Any) -> None:
    """The phase's adapter bundle, written beside and renamed into place (a failed write leaves
    the checkpoints as they were and no half bundle)."""
    tmp = adapter.with_name(f".{adapter.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_adapter_bundle(model, tokenizer, recipe, tmp, **kw)
        if adapter.exists():
            shutil.rmtree(adapter)
        tmp.rename(adapter)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or "write" in str(exc).lower():
            raise write_failed(adapter, exc) from None
        raise


def _eval_callback(recipe: Recipe, tokenizer: Any, out_dir: Path, console: Any) -> Any:
    """The long-context probe callback when the recipe's ``eval.enabled`` is set, else None."""
    if not recipe.eval.enabled:
        return None
    from longqa.train.eval_callback import LongContextEvalCallback

    return LongContextEvalCallback(
        recipe.eval, tokenizer, recipe.rope, out_dir, console=console, log_file=LOG_FILE
    )
