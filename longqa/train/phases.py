"""Which data each training phase reads: the CLI's ``--data`` applied to a recipe, phases built.

Usage::

    from longqa.train.phases import RunInputs, build_phase_dataset, prepare_recipe
    inputs = RunInputs(data=["chat.jsonl", "alpaca.json:0.5"], max_steps=3)
    recipe, notes = prepare_recipe(recipe, inputs)
    dataset, collator, stats = build_phase_dataset(recipe, recipe.train.phases[0], tokenizer)

``--data PATH[:WEIGHT]`` (repeatable) replaces the datasets of every ``sft`` phase, each path read in
the format detected per row (or ``data_format``; ``data_columns`` names the prompt/response columns
of CSV-like rows). ``--pretrain-data PATH[:WEIGHT]`` (repeatable) replaces the datasets of every
``pretrain`` phase — continued pretraining on your own text (``.txt``/``.md`` files or folders,
``{"text"}`` rows; conversations are trained on every token) — and adds a one-epoch ``pretrain``
phase before the others when the recipe has none. Otherwise pretraining phases keep their own
datasets; one whose data is not on disk is skipped with a notice that says so (an error with
``strict``), and trains on the text of the ``--data`` conversations only when asked
(``pretrain_on_sft_text``). A weight that is not a number > 0 is a one-line error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longqa.config.recipe import DatasetSpec, PhaseConfig, Recipe, recipes_dir
from longqa.core.errors import LongqaError
from longqa.data.formats import parse_columns
from longqa.data.sources import load_dataset_records
from longqa.train.data import TokenizeStats, mix_records, tokenize_pretrain, tokenize_sft
from longqa.train.distributed import sequence_parallel_size
from longqa.train.packing import ListDataset, PackedCollator, PaddedCollator, pack_examples


def _exists(path: str) -> bool:
    p = Path(path).expanduser()
    return p.exists() or (not p.is_absolute() and (recipes_dir().parent / path).exists())


def parse_data_arg(
    spec: str, fmt: str = "auto", columns: Sequence[str] | None = None, flag: str = "--data"
) -> DatasetSpec:
    """``PATH`` or ``PATH:WEIGHT`` (weight a number > 0) → a :class:`DatasetSpec`. A path that
    exists as given keeps its ':'; otherwise what follows the last ':' is the weight."""
    path, weight = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and not _exists(spec) and not any(c in tail for c in "/\\"):
        try:
            weight = float(tail)
        except ValueError:
            raise LongqaError(
                f"{flag} {spec}: the weight '{tail}' after ':' is not a number "
                f"(PATH[:WEIGHT], e.g. {head}:0.5)"
            ) from None
        path = head
        if not (weight > 0 and math.isfinite(weight)):
            raise LongqaError(f"{flag} {spec}: the weight '{tail}' after ':' must be > 0")
    try:
        return DatasetSpec(path=path, weight=weight, format=fmt, columns=columns)
    except ValueError:
        raise LongqaError(f"--data-format {fmt}: not a known format") from None


def resolve_dataset_path(path: str, phase: str) -> Path:
    """A dataset path as given, or relative to the repository (where the recipes folder is)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    alt = recipes_dir().parent / path
    if not p.is_absolute() and alt.exists():
        return alt
    raise LongqaError(f"dataset not found: {path} (phase '{phase}')")


def _missing(phase: PhaseConfig) -> list[str]:
    out = []
    for d in phase.datasets:
        try:
            resolve_dataset_path(d.path, phase.name)
        except LongqaError as err:
            out.append(str(err))
    return out


@dataclass(frozen=True)
class RunInputs:
    """What one ``longqa train`` run changes in its recipe: ``--data`` (``PATH[:WEIGHT]`` items),
    ``--data-format``, ``--data-columns``, ``--pretrain-data`` (``PATH[:WEIGHT]`` items),
    ``--out``, ``--max-steps`` (caps every phase), ``--strict``, ``--pretrain-on-sft-text``."""

    data: Sequence[str] = ()
    data_format: str = "auto"
    out: str | None = None
    max_steps: int | None = None
    strict: bool = False
    pretrain_on_sft_text: bool = False
    pretrain_data: Sequence[str] = ()
    data_columns: str | Sequence[str] | None = None


def prepare_recipe(recipe: Recipe, inputs: RunInputs | None = None) -> tuple[Recipe, list[str]]:
    """Apply a run's inputs (see :class:`RunInputs` and the module docstring) to a copy of the
    recipe; returns it and the notices to print."""
    inputs = inputs or RunInputs()
    data, data_format = inputs.data, inputs.data_format
    out, max_steps = inputs.out, inputs.max_steps
    strict, pretrain_on_sft_text = inputs.strict, inputs.pretrain_on_sft_text
    pretrain_data = inputs.pretrain_data
    columns = list(parse_columns(inputs.data_columns) or []) or None
    specs = [
        parse_data_arg(d, data_format, columns)
        for d in ([data] if isinstance(data, str) else data or [])
    ]
    pre = [
        parse_data_arg(d, flag="--pretrain-data")
        for d in ([pretrain_data] if isinstance(pretrain_data, str) else pretrain_data or [])
    ]
    notes: list[str] = []
    phases = [p.model_copy(deep=True) for p in recipe.train.phases]
    if not phases:
        if not specs and not pre:
            raise LongqaError(
                f"recipe '{recipe.name}': train.phases is empty; add a phase, --data or "
                "--pretrain-data"
            )
        phases = [PhaseConfig(name="sft", kind="sft", epochs=1.0)] if specs else []
    shown = _shown(specs)
    if pre:
        phases = _apply_pretrain_data(phases, pre, notes)
    if specs:
        sft = [p for p in phases if p.kind == "sft"]
        if not sft:
            raise LongqaError(f"recipe '{recipe.name}' has no sft phase for --data to replace")
        for p in sft:
            p.datasets = [d.model_copy() for d in specs]
        notes.append(f"--data: {len(sft)} sft phase(s) now train on {shown}")
    kept, skipped = [], []
    for p in phases:
        if p.kind == "sft" and pre and not specs and _missing(p):
            notes.append(f"phase '{p.name}' (sft) skipped: {'; '.join(_missing(p))} (no --data)")
            continue
        missing = _missing(p) if p.kind == "pretrain" else []
        if missing and specs and pretrain_on_sft_text:
            p.datasets = [d.model_copy() for d in specs]
            notes.append(
                f"phase '{p.name}': its pretraining text is not on disk; "
                f"continued pretraining on the full text of {shown} instead (--pretrain-on-sft-text)"
            )
        elif missing or (p.kind == "pretrain" and not p.datasets):
            why = "; ".join(missing) or "no datasets"
            if strict:
                raise LongqaError(f"pretraining phase '{p.name}' has no data: {why} (--strict)")
            notes.append(
                f"phase '{p.name}' (pretrain) skipped: {why}. Build it (longqa build-data --task "
                "long-pretrain), or pass --pretrain-on-sft-text with --data; --strict makes this "
                "an error"
            )
            skipped.append(why)
            continue
        kept.append(p)
    if not kept:
        raise LongqaError(f"recipe '{recipe.name}': no phase left to train ({'; '.join(skipped)})")
    if max_steps is not None:
        for p in kept:
            capped = min(p.steps, max_steps) if p.steps else max_steps
            object.__setattr__(p, "steps", capped)
            object.__setattr__(p, "epochs", None)
    train = recipe.train.model_copy(update={"phases": kept})
    update: dict[str, Any] = {"train": train}
    if out is not None:
        update["output"] = recipe.output.model_copy(update={"dir": str(out)})
    return recipe.model_copy(update=update), notes


def _shown(specs: list[DatasetSpec]) -> str:
    return ", ".join(
        f"{d.path}" + (f" (weight {d.weight:g})" if d.weight != 1 else "") for d in specs
    )


def _apply_pretrain_data(
    phases: list[PhaseConfig], pre: list[DatasetSpec], notes: list[str]
) -> list[PhaseConfig]:
    """``--pretrain-data``: every pretrain phase trains on it; a recipe without one gets one."""
    targets = [p for p in phases if p.kind == "pretrain"]
    if not targets:
        name = "pretrain" if all(p.name != "pretrain" for p in phases) else "own-pretrain"
        targets = [PhaseConfig(name=name, kind="pretrain", epochs=1.0)]
        phases = targets + phases
        notes.append(f"--pretrain-data: added phase '{name}' (pretrain, 1 epoch) before the others")
    for p in targets:
        p.datasets = [d.model_copy() for d in pre]
    notes.append(f"--pretrain-data: {len(targets)} pretrain phase(s) now train on {_shown(pre)}")
    return phases


def build_phase_dataset(
    recipe: Recipe, phase: PhaseConfig, tokenizer: Any, *, skip_bad_rows: bool = False
) -> tuple[ListDataset, Any, TokenizeStats]:
    """Read, mix, tokenize (and pack) a phase's datasets; returns dataset, collator and stats
    (``stats.detected``: what each file was read as; ``stats.skipped_rows``: bad rows skipped)."""
    if not phase.datasets:
        raise LongqaError(f"phase '{phase.name}' has no datasets (set train.phases or --data)")
    parts, detected, skipped, skips = [], [], [], []
    for d in phase.datasets:
        path = resolve_dataset_path(d.path, phase.name)
        loaded = load_dataset_records(
            path, d.format, skip_bad_rows=skip_bad_rows, columns=d.columns
        )
        parts.append((loaded.records, d.weight))
        detected += loaded.describe()
        skipped.append(loaded.skipped)
        skips += loaded.skips
    records = mix_records(parts, seed=recipe.train.seed)
    max_len = phase.max_length or recipe.train.max_length
    if phase.kind == "sft":
        examples, stats = tokenize_sft(
            records,
            tokenizer,
            max_length=max_len,
            overlength=recipe.data.overlength,
            skip_bad_rows=skip_bad_rows,
        )
    else:
        examples, stats = tokenize_pretrain(records, tokenizer, max_length=max_len)
    stats.detected = detected
    for counts in skipped:
        stats.skipped_rows.update(counts)
    stats.skips = skips + stats.skips
    if phase.kind == "sft" and all(r.messages is None for r in records):
        stats.notes.append(
            f"phase '{phase.name}' (sft) reads only plain text ({len(records)} documents), trained "
            "on every token; for continued pretraining pass it as --pretrain-data instead"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = pad if pad is not None else 0
    # split over GPUs: rows as wide as a multiple of the split (the data adapter adds no padding
    # of its own and refuses other widths)
    sp = sequence_parallel_size()
    multiple = sp if sp > 1 else None
    if recipe.data.packing:
        check_packed_attention(recipe, sp)
        # each piece also needs its samples' whole lengths (dynamic RoPE)
        collator = PackedCollator(pad, pad_to_multiple_of=multiple, sample_lengths=sp > 1)
        return ListDataset(pack_examples(examples, max_len)), collator, stats
    return ListDataset(examples), PaddedCollator(pad, pad_to_multiple_of=multiple), stats


def check_packed_attention(recipe: Recipe, sp: int) -> None:
    """Refuse packed rows split over ``sp > 1`` GPUs unless the attention is flash-attention.

    DeepSpeed's Ulysses attention drops the attention mask: flash-attention's varlen path still
    keeps packed samples apart (through the gathered position ids), SDPA and eager run one causal
    mask over the whole row, so every sample would attend to the samples packed before it."""
    if sp <= 1:
        return
    import torch

    from longqa.models.load import choose_attn_implementation
    from longqa.train.distributed import device_for_rank

    device = device_for_rank(torch.cuda.is_available())
    attn = choose_attn_implementation(recipe.model.attn_implementation, device)
    if attn != "flash_attention_2":
        raise LongqaError(
            f"packed rows split over {sp} GPUs need flash-attention ({attn} would let packed "
            "samples attend to each other): install flash-attn or set model.attn_implementation: "
            "flash_attention_2, or set data.packing: false"
        )


def describe_phase_data(phase: PhaseConfig, stats: TokenizeStats, rows: int) -> list[str]:
    """The lines ``longqa train`` prints about a phase's data (detection, then the counts)."""
    s = stats
    msg = (
        f"phase {phase.name} ({phase.kind}): {s.examples} examples, {rows} rows, "
        f"{s.tokens:,} tokens ({s.label_tokens:,} trained)"
    )
    extra = []
    if s.truncated:
        extra.append(f"{s.truncated} truncated")
    if s.dropped_overlength:
        extra.append(f"{s.dropped_overlength} dropped as over-long")
    if s.dropped_no_labels:
        extra.append(f"{s.dropped_no_labels} dropped without assistant tokens")
    if s.split:
        extra.append(f"{s.split} long documents split")
    if s.skipped_rows:
        why = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped_rows.items()))
        extra.append(f"{sum(s.skipped_rows.values())} bad rows skipped ({why})")
    return [*s.detected, msg + (f"; {', '.join(extra)}" if extra else "")]


def describe_run(recipe: Recipe, world_size: int = 1, sequence_split: int = 1) -> str:
    """The header line of ``longqa train``: its processes and the global batch of an optimizer step
    (micro-batch × accumulation × data-parallel processes; under a sequence split, the processes
    that share one sequence count once)."""
    t = recipe.train
    data_parallel = max(1, world_size // max(1, sequence_split))
    rows = t.micro_batch_size * t.grad_accum * data_parallel
    procs = "1 process" if world_size == 1 else f"{world_size} processes"
    if sequence_split > 1:
        procs += f" (each sequence split over {sequence_split})"
    factors = f"{t.micro_batch_size} per micro-batch × {t.grad_accum} accumulation"
    if data_parallel > 1:
        factors += f" × {data_parallel} processes"
    return f"training {recipe.name} on {procs}: global batch {factors} = {rows} rows per step"
