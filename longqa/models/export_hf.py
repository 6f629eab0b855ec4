"""Export a trained adapter for standard inference engines (transformers, vLLM, TGI, llama.cpp).

Usage::

    from longqa.models.export_hf import export_adapter, hf_rope_parameters
    export_adapter("runs/qwen14b-yarn32k/adapter", "exports/qwen14b-32k", merge=True)

``merge=True`` loads the base model un-quantised in ``dtype`` (bfloat16 by default; a base that is
itself stored 4-bit is de-quantised first), folds the LoRA weights and trained norms in
(``peft``'s ``merge_and_unload``) and saves a plain model folder. ``merge=False`` copies the adapter
and writes the base model's config with the RoPE settings to ``base_model_config/config.json``
(engines take RoPE from the base config, never from a LoRA adapter).

The RoPE spec the adapter was trained with becomes transformers' ``rope_parameters`` (and the legacy
``rope_scaling`` + ``rope_theta`` keys older engines read): static methods as themselves (yarn and
llama3 with ``original_max_position_embeddings``; linear does not depend on it and transformers
warns when it is there); ``abf`` and static ``ntk`` as a new ``rope_theta``;
``max_position_embeddings`` = ceil(factor × L0) for every scaled method (what transformers checks
YaRN's factor against, and where lm-eval / vLLM cap prompts); dynamic
methods, which standard engines do not implement the way training ran them, as their static
counterpart at the trained length's scale (dynamic YaRN s = (L + margin) / L0 → static YaRN with that
factor), with a warning: shorter prompts then see the long-context scale instead of a smaller one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, keep_umask, replace_folder

log = logging.getLogger(__name__)

EXPORT_INFO = "longqa_export.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _model_rope(config: Any) -> tuple[float, int]:
    """(rope base, original window) of a transformers config before any longqa scaling."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    base = float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
    if params.get("rope_type", "default") not in ("default", None):
        raise LongqaError(
            f"base model already uses rope_type '{params['rope_type']}'; exporting a second "
            "scaling on top of it is not supported"
        )
    window = params.get("original_max_position_embeddings") or config.max_position_embeddings
    return base, int(window)


def _head_dim(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def hf_rope_parameters(
    config: Any, spec: Any, trained_length: int | None = None
) -> tuple[dict[str, Any], int, list[str]]:
    """Translate a longqa RoPE spec into (``rope_parameters``, ``max_position_embeddings``, warnings)
    that plain transformers reproduces without any longqa patch."""
    from longqa.ops.rope_scaling import compute_rope, yarn_mscale

    base, l0 = _model_rope(config)
    if spec is None or (spec.method == "none" and spec.base is None):
        return {"rope_type": "default", "rope_theta": base}, int(config.max_position_embeddings), []
    base = float(spec.base) if spec.base is not None else base
    l0 = int(spec.original_max_position_embeddings or l0)
    warnings: list[str] = []
    method, factor = spec.method, spec.factor
    if factor is None and spec.max_position_embeddings is not None:
        factor = max(1.0, spec.max_position_embeddings / l0)
    if method.startswith("dynamic-"):
        if not trained_length:
            raise LongqaError(
                f"rope method '{method}' is exported at the trained length, but the adapter's "
                "longqa.json has no 'max_length'"
            )
        seq = int(trained_length)
        if method == "dynamic-yarn":
            factor = max(1.0, (seq + spec.margin) / l0)
            method = "yarn"
            warnings.append(
                f"dynamic-yarn exported as static yarn with factor {factor:g} = (trained length "
                f"{seq} + margin {spec.margin}) / {l0}: standard engines apply this scale at every "
                "length, while training rescaled to each sequence's own length, so prompts much "
                "shorter than the trained length see slightly different positions than in training"
            )
        else:  # dynamic-ntk → the NTK base it reaches at the trained length
            inv, _ = compute_rope(
                spec.model_dump(),
                head_dim=_head_dim(config),
                base=base,
                original_max_position_embeddings=l0,
                seq_len=seq,
            )
            base, method = float(inv[1].double() ** (-_head_dim(config) / 2)), "abf"
            factor = max(seq, l0) / l0  # the scale that base was computed for
            warnings.append(
                f"dynamic-ntk exported as a fixed rope_theta {base:.6g} (its value at the trained "
                f"length {seq}); shorter prompts see that base instead of a smaller one"
            )
    if method == "ntk":  # static NTK-aware scaling is a new base: base·s^(d/(d-2))
        d = _head_dim(config)
        base, method = base * float(factor) ** (d / (d - 2)), "abf"
    # The window every scaled method addresses is factor × L0: transformers derives YaRN's
    # implicit factor from it (and warns on a mismatch), lm-eval and vLLM cap prompts at it.
    new_window = math.ceil(round(float(factor) * l0, 6)) if factor is not None else None
    params: dict[str, Any] = {"rope_theta": base}
    if method in ("abf", "none"):
        params["rope_type"] = "default"
        new_window = new_window or spec.max_position_embeddings or config.max_position_embeddings
    else:
        params.update(rope_type=method, factor=float(factor))
        if method in ("yarn", "llama3"):  # transformers rejects the key for linear (a warning)
            params["original_max_position_embeddings"] = l0
        if method == "yarn":
            params.update(
                beta_fast=float(spec.beta_fast),
                beta_slow=float(spec.beta_slow),
                attention_factor=float(spec.attention_factor or yarn_mscale(float(factor))),
            )
        elif method == "llama3":
            params.update(
                low_freq_factor=float(spec.low_freq_factor),
                high_freq_factor=float(spec.high_freq_factor),
            )
        elif method != "linear":
            raise LongqaError(f"rope method '{method}' has no standard config equivalent")
    if spec.attention_factor is not None and method != "yarn":
        warnings.append(
            f"attention_factor {spec.attention_factor} cannot be expressed for rope_type "
            f"'{params['rope_type']}' in a standard config and is dropped"
        )
    if spec.logn:
        warnings.append(
            "log-n attention (rope.logn) has no standard config equivalent and is dropped: "
            "engines run the exported model without it"
        )
    return params, int(new_window), warnings


def write_rope_config(config_file: Path, params: dict[str, Any], window: int) -> dict[str, Any]:
    """Set RoPE keys of a saved ``config.json``: ``rope_parameters`` (transformers 5), the legacy
    ``rope_scaling`` (null for unscaled RoPE) and ``rope_theta`` (vLLM, TGI, llama.cpp converters)."""
    cfg = json.loads(config_file.read_text(encoding="utf-8"))
    cfg["rope_parameters"] = dict(params)
    cfg["rope_theta"] = params["rope_theta"]
    if params["rope_type"] == "default":
        cfg["rope_scaling"] = None
    else:  # transformers 5 reads rope_scaling first when present: keep it identical
        cfg["rope_scaling"] = {**params, "type": params["rope_type"]}
    cfg["max_position_embeddings"] = int(window)
    cfg.pop("_model_name_or_path", None)  # the GGUF loader's note of the file's model name
    atomic_write_json(config_file, cfg)
    return cfg


def export_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    merge: bool = False,
    base: str | None = None,
    dtype: str = "bfloat16",
    from_nf4: bool = False,
) -> dict[str, Any]:
    """Export ``adapter_dir`` to ``out_dir``; returns a summary (paths, rope_parameters, warnings).

    ``from_nf4``: merge into the de-quantised NF4 weights the QLoRA adapter was trained against
    (needs bitsandbytes) instead of the original full-precision weights.
    """
    from longqa.models.adapters import read_adapter_info, read_rope_spec
    from longqa.models.load import check_supported_checkpoint

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    info = read_adapter_info(adapter_dir)
    spec = read_rope_spec(adapter_dir)
    check_supported_checkpoint(base or str(info["base_model"]))
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if merge:
            config_file, params, window, warnings = _export_merged(
                adapter_dir, tmp, base=base, dtype=dtype, spec=spec, info=info, from_nf4=from_nf4
            )
        else:
            config_file, params, window, warnings = _export_adapter_only(
                adapter_dir, tmp, base=base or str(info["base_model"]), spec=spec, info=info
            )
        write_rope_config(config_file, params, window)
        summary = {
            "adapter": str(adapter_dir.resolve()),
            "base_model": base or info["base_model"],
            "merged": merge,
            "dtype": dtype if merge else None,
            "rope_spec": spec.model_dump(mode="json") if spec else None,
            "rope_parameters": params,
            "max_position_embeddings": window,
            "warnings": warnings,
        }
        atomic_write_json(tmp / EXPORT_INFO, summary)
        keep_umask(tmp)  # readable by whoever the umask allows (safetensors writes 600)
        replace_folder(tmp, out)  # the previous folder stays until this one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for w in warnings:
        log.warning(w)
    summary["out"] = str(out)
    return summary


def _export_merged(adapter_dir, tmp, *, base, dtype, spec, info, from_nf4):
    """Merge into the weights the adapter was trained against: full precision, or (``from_nf4``,
    or a base stored 4-bit) the de-quantised 4-bit weights."""
    from longqa.models.load import load
    from longqa.patch.rope import revert_rope_scaling

    model, tokenizer, _ = load(
        base, adapter=adapter_dir, dtype=dtype, quantization="nf4" if from_nf4 else "none",
        attn_implementation="sdpa", dequantize=True,
    )  # fmt: skip
    merged = model.merge_and_unload()
    revert_rope_scaling(merged)
    params, window, warnings = hf_rope_parameters(merged.config, spec, info.get("max_length"))
    merged.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    return tmp / "config.json", params, window, warnings


def _export_adapter_only(adapter_dir, tmp, *, base, spec, info):
    from transformers import AutoConfig

    from longqa.models.checkpoints import resolve_for_loading

    for f in Path(adapter_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    config = AutoConfig.from_pretrained(resolve_for_loading(base))
    params, window, warnings = hf_rope_parameters(config, spec, info.get("max_length"))
    (tmp / "base_model_config").mkdir()
    config.save_pretrained(str(tmp / "base_model_config"))
    atomic_write_json(tmp / "rope_overrides.json", {"rope_parameters": params})
    return tmp / "base_model_config" / "config.json", params, window, warnings
