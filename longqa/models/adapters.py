"""Trained adapter bundles: save once, load anywhere with the same positions.

Usage::

    from longqa.models.adapters import save_adapter_bundle, read_adapter_info
    save_adapter_bundle(peft_model, tokenizer, recipe, "runs/x/adapter")
    model, tok, rope = longqa.models.load.load(adapter="runs/x/adapter")

An adapter folder holds peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA weights
and the trainable norm layers), the tokenizer files, ``recipe.yaml`` (the resolved recipe),
``rope_spec.json`` (the :class:`~longqa.config.recipe.RopeConfig` the model was trained with) and
``longqa.json`` (``{"base_model": …, "max_length": …}``). Loading (:func:`longqa.models.load.load`)
re-applies the RoPE spec to the base model before the LoRA weights go on, so evaluation sees the same
positions as training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longqa.config.recipe import Recipe, RopeConfig, dump_recipe, recipe_max_length
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, atomic_write_text, keep_umask

INFO_FILE = "longqa.json"
ROPE_FILE = "rope_spec.json"
RECIPE_FILE = "recipe.yaml"
REQUIRED_FILES = ("adapter_config.json", INFO_FILE)


def save_adapter_bundle(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    state_dict: dict[str, Any] | None = None,
    **extra_info: Any,
) -> Path:
    """Write the adapter, tokenizer, resolved recipe, RoPE spec and ``longqa.json`` to ``out_dir``.

    ``model`` is a ``peft.PeftModel``; ``state_dict`` (names as in ``model.state_dict()``) replaces
    the model's own tensors, e.g. the gathered ones of a sharded model; ``extra_info`` keys (e.g.
    ``phase``, ``steps``) are added to ``longqa.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "peft_config"):
        raise LongqaError(f"save_adapter_bundle: expected a peft model, got {type(model).__name__}")
    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    for f in out.iterdir():  # safetensors writes 600: give the files the umask's mode
        if f.is_file():
            keep_umask(f)
    atomic_write_text(out / RECIPE_FILE, dump_recipe(recipe))
    atomic_write_json(out / ROPE_FILE, recipe.rope.model_dump(mode="json"))
    info = {"base_model": recipe.model.name, "max_length": recipe_max_length(recipe)}
    info.update(extra_info)
    atomic_write_json(out / INFO_FILE, info)
    return out


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` looks like a longqa adapter bundle."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in REQUIRED_FILES)


def read_adapter_info(adapter_dir: str | Path) -> dict[str, Any]:
    """``longqa.json`` plus ``rope`` (the RopeConfig dump or None) and ``recipe`` (YAML text)."""
    p = Path(adapter_dir)
    if not p.is_dir():
        raise LongqaError(f"adapter folder not found: {p}")
    missing = [f for f in REQUIRED_FILES if not (p / f).is_file()]
    if missing:
        raise LongqaError(
            f"{p}: not a longqa adapter (missing {', '.join(missing)}); "
            "expected the output of `longqa train`"
        )
    try:
        info = json.loads((p / INFO_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{p / INFO_FILE}: invalid JSON ({exc.msg})") from None
    if not isinstance(info, dict) or "base_model" not in info:
        raise LongqaError(f"{p / INFO_FILE}: field 'base_model' missing")
    info["rope"] = _read_rope(p)
    recipe_file = p / RECIPE_FILE
    info["recipe"] = recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else None
    return info


def _read_rope(p: Path) -> dict[str, Any] | None:
    f = p / ROPE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{f}: invalid JSON ({exc.msg})") from None


def read_rope_spec(adapter_dir: str | Path) -> RopeConfig | None:
    """The saved RoPE spec (None when the adapter was trained without scaling)."""
    raw = _read_rope(Path(adapter_dir))
    if raw is None:
        return None
    try:
        spec = RopeConfig.model_validate(raw)
    except Exception as exc:  # pydantic ValidationError → one line
        raise LongqaError(f"{Path(adapter_dir) / ROPE_FILE}: invalid RoPE spec ({exc})") from None
    return None if spec.method == "none" else spec
