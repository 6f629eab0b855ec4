"""Trained adapter bundles: save once, load anywhere with the same positions.

Usage::

    from longqa.models.adapters import save_adapter_bundle, load_model_with_adapter, read_adapter_info
    save_adapter_bundle(peft_model, tokenizer, recipe, "runs/x/adapter")
    model, tok, rope = load_model_with_adapter("runs/x/adapter")

An adapter folder holds peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA weights
and the trainable norm layers), the tokenizer files, ``recipe.yaml`` (the resolved recipe),
``rope_spec.json`` (the :class:`~longqa.config.recipe.RopeConfig` the model was trained with) and
``longqa.json`` (``{"base_model": …, "max_length": …}``). Loading re-applies the RoPE spec to the
base model before the LoRA weights go on, so evaluation sees the same positions as training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longqa.config.recipe import Recipe, RopeConfig, dump_recipe
from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, atomic_write_text

INFO_FILE = "longqa.json"
ROPE_FILE = "rope_spec.json"
RECIPE_FILE = "recipe.yaml"
REQUIRED_FILES = ("adapter_config.json", INFO_FILE)


def recipe_max_length(recipe: Recipe) -> int:
    """Longest sequence the recipe trains on (the largest phase length, else train.max_length)."""
    lengths = [p.max_length for p in recipe.train.phases if p.max_length]
    return max([recipe.train.max_length, *lengths]) if lengths else recipe.train.max_length


def save_adapter_bundle(
    model: Any, tokenizer: Any, recipe: Recipe, out_dir: str | Path, **extra_info: Any
) -> Path:
    """Write the adapter, tokenizer, resolved recipe, RoPE spec and ``longqa.json`` to ``out_dir``.

    ``model`` is a ``peft.PeftModel``; ``extra_info`` keys (e.g. ``phase``, ``steps``) are added to
    ``longqa.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "peft_config"):
        raise LongqaError(f"save_adapter_bundle: expected a peft model, got {type(model).__name__}")
    model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
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


def _same_base(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        from longqa.models.loading import resolve_model_path

        return Path(resolve_model_path(a)).resolve() == Path(resolve_model_path(b)).resolve()
    except Exception:
        return False


def load_model_with_adapter(
    adapter_dir: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    quantization: str = "none",
    attn_implementation: str = "auto",
    is_trainable: bool = False,
) -> tuple[Any, Any, RopeConfig | None]:
    """Load the adapter's base model, re-apply its RoPE spec, put the LoRA weights on.

    Returns ``(peft_model, tokenizer, rope_spec)``. ``base`` overrides the base model location but
    must name the same model the adapter was trained on.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from longqa.models.loading import load_model

    info = read_adapter_info(adapter_dir)
    trained_on = str(info["base_model"])
    if base is not None and not _same_base(base, trained_on):
        raise LongqaError(
            f"--model {base} does not match the adapter's base model {trained_on} "
            f"(from {Path(adapter_dir) / INFO_FILE})"
        )
    model = load_model(
        base or trained_on,
        dtype=dtype,
        quantization=quantization,
        attn_implementation=attn_implementation,
    )
    spec = read_rope_spec(adapter_dir)
    if spec is not None:
        from longqa.patch.rope import apply_rope_scaling

        model = apply_rope_scaling(model, spec)
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LongqaError(
            f"{adapter_dir}: cannot load adapter onto {trained_on}: {first}"
        ) from None
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    except (OSError, ValueError):
        from longqa.models.loading import load_tokenizer

        tokenizer = load_tokenizer(base or trained_on)
    return model, tokenizer, spec
