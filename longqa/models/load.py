"""The one model loader: base model (+ LoRA adapter) (+ RoPE spec) → model, tokenizer, spec.

Usage::

    from longqa.models.load import load, load_from_config
    model, tok, spec = load("smollm2-135m", rope=RopeConfig(method="yarn", factor=2.0))
    model, tok, spec = load(adapter="runs/x/adapter")              # base + RoPE spec from the bundle
    model, tok, spec = load_from_config(recipe.model, rope=recipe.rope, device="cuda")  # training

Every command loads through :func:`load` — training, eval, analyze, generate and export — so they
share one set of checks: the checkpoint's architecture is in :mod:`longqa.patch.families` (or is
original Qwen, converted on load), ``dtype`` / ``quantization`` are known, an adapter's ``base``
names the model it was trained on. The steps, in order: resolve the name once
(:func:`longqa.models.checkpoints.resolve_model_path`, then the checkpoint layout), load the
weights (optionally 4-bit NF4, QLoRA https://arxiv.org/abs/2305.14314, and optionally
de-quantised again), apply the RoPE spec (an explicit ``rope`` overrides the adapter's saved one;
``method: none`` means native RoPE), put the LoRA weights on, and give the tokenizer the window
the spec opened.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError
from longqa.models.adapters import INFO_FILE, read_adapter_info, read_rope_spec
from longqa.models.checkpoints import apply_layout, resolve_model_path, tokenizer_at
from longqa.models.qwen_convert import is_original_qwen
from longqa.patch.families import supported_model_types
from longqa.patch.rope import apply_rope_scaling

if TYPE_CHECKING:
    from longqa.config.recipe import ModelConfig

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "nf4")


class Loaded(NamedTuple):
    """What :func:`load` returns; unpacks as ``model, tokenizer, rope``."""

    model: Any
    tokenizer: Any
    rope: RopeConfig | None  # the spec in effect (None: native RoPE)


def check_supported_checkpoint(name: str) -> None:
    """One-line error when a local checkpoint is of an architecture longqa does not support."""
    _check_supported(resolve_model_path(name))


def _check_supported(resolved: str) -> None:
    path = Path(resolved)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        return  # hub id without a local copy: transformers reports what it finds
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{cfg_file}: invalid JSON ({exc.msg})") from None
    if model_type in supported_model_types() or is_original_qwen(path):
        return
    raise LongqaError(
        f"{cfg_file}: model_type '{model_type}' is not supported; supported: Llama, Qwen2 and "
        f"original Qwen (model types {', '.join(supported_model_types())})"
    )


def same_base(a: str, b: str) -> bool:
    """True when two model names resolve to the same checkpoint."""
    if a == b:
        return True
    try:
        return Path(resolve_model_path(a)).resolve() == Path(resolve_model_path(b)).resolve()
    except LongqaError:
        return False


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attn_implementation(requested: str = "auto", device: Any = None) -> str:
    """``auto`` → flash_attention_2 when flash-attn is installed and the model goes to CUDA, else
    sdpa; any other value is returned unchanged."""
    if requested != "auto":
        return requested
    import torch

    on_cuda = torch.cuda.is_available() and (device is None or "cuda" in str(device))
    return "flash_attention_2" if on_cuda and flash_attn_installed() else "sdpa"


def nf4_config(double_quant: bool = True, quant_storage: str | None = None) -> Any:
    """QLoRA's 4-bit NF4 quantisation (https://arxiv.org/abs/2305.14314), bf16 compute.

    ``quant_storage`` packs the 4-bit weights into that dtype (``bfloat16`` under FSDP or ZeRO-3,
    which shard only parameters of a floating dtype, as FSDP-QLoRA does)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=getattr(torch, quant_storage) if quant_storage else torch.uint8,
    )


def _weights(
    name: str,
    path: str,
    *,
    dtype: str,
    quantization: str,
    attn_implementation: str,
    device: Any,
    double_quant: bool,
    trust_remote_code: bool,
    quant_storage: str | None,
) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype),
        "attn_implementation": choose_attn_implementation(attn_implementation, device),
        "trust_remote_code": trust_remote_code,
    }
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(double_quant, quant_storage)
        target = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs["device_map"] = {"": str(target)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise LongqaError(f"cannot load model '{name}': {str(exc).splitlines()[0]}") from None
    if device is not None and quantization == "none":
        model = model.to(device)
    return model


def _is_quantized(model: Any) -> bool:
    return getattr(model.config, "quantization_config", None) is not None


def _open_tokenizer_window(tokenizer: Any, model: Any) -> None:
    """Let the tokenizer encode what the (RoPE-extended) model addresses without a length warning."""
    window = getattr(model.config, "max_position_embeddings", None)
    if window and (getattr(tokenizer, "model_max_length", None) or 0) < window:
        tokenizer.model_max_length = int(window)


def load(
    model: str | None = None,
    *,
    adapter: str | Path | None = None,
    rope: RopeConfig | None = None,
    dtype: str = "float32",
    quantization: str = "none",
    attn_implementation: str = "auto",
    layout: str = "auto",
    device: Any = None,
    double_quant: bool = True,
    trust_remote_code: bool = False,
    dequantize: bool = False,
    is_trainable: bool = False,
    quant_storage: str | None = None,
) -> Loaded:
    """Load ``model`` (alias, ``.gguf``, folder or hub id; default: the adapter's base) in ``dtype``.

    ``adapter``: a longqa adapter bundle put on top (``model`` must then name the same base).
    ``rope``: a RoPE spec overriding the adapter's (``method: none`` = native RoPE).
    ``quantization``: ``nf4`` loads 4-bit; ``dequantize`` turns 4-bit weights (``nf4`` or stored
    4-bit) back into ``dtype`` tensors, the weights a QLoRA adapter was trained against.
    ``device``: default CUDA if available for 4-bit, else where transformers puts it.
    ``is_trainable``: the adapter's weights stay trainable (continued training).
    The model is returned in eval mode.
    """
    if dtype not in DTYPES:
        raise LongqaError(f"dtype '{dtype}' not supported; expected one of {', '.join(DTYPES)}")
    if quantization not in QUANTIZATIONS:
        raise LongqaError(f"quantization '{quantization}' not supported; expected none or nf4")
    if not model and adapter is None:
        raise LongqaError("give a model, an adapter or both (--model / --adapter)")
    name, spec = model or "", None
    if adapter is not None:
        trained_on = str(read_adapter_info(adapter)["base_model"])
        if model and not same_base(model, trained_on):
            raise LongqaError(
                f"--model {model} does not match the adapter's base model {trained_on} "
                f"(from {Path(adapter) / INFO_FILE})"
            )
        name, spec = model or trained_on, read_rope_spec(adapter)
    resolved = resolve_model_path(name)  # the one resolution of the name
    _check_supported(resolved)
    path = apply_layout(resolved, layout)
    lm = _weights(
        name, path, dtype=dtype, quantization=quantization,
        attn_implementation=attn_implementation, device=device, double_quant=double_quant,
        trust_remote_code=trust_remote_code, quant_storage=quant_storage,
    )  # fmt: skip
    if dequantize and _is_quantized(lm):
        import torch

        log.warning("de-quantising the 4-bit base weights to %s", dtype)
        lm = lm.dequantize().to(getattr(torch, dtype))
    if rope is not None:
        spec = None if rope.method == "none" else rope
    if spec is not None:
        apply_rope_scaling(lm, spec)
    if adapter is not None:
        lm = _with_adapter(lm, adapter, trained_on=name, is_trainable=is_trainable)
    lm.eval()
    tokenizer = _tokenizer(name, path, adapter, trust_remote_code=trust_remote_code)
    _open_tokenizer_window(tokenizer, lm)
    return Loaded(lm, tokenizer, spec)


def load_from_config(cfg: ModelConfig, **overrides: Any) -> Loaded:
    """:func:`load` driven by a recipe's ``model`` section; keyword arguments (``rope``, ``device``,
    ``dtype`` adapted to the machine, …) override or add to it."""
    return load(cfg.name, **{**cfg.model_dump(exclude={"name"}), **overrides})


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Context for wrapping a model with peft: its wrapper reads ``model.is_gradient_checkpointing``,
    which transformers 5 deprecates for ``is_activation_checkpointing``; that one FutureWarning,
    not ours to fix, is silenced while peft wraps."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def _with_adapter(lm: Any, adapter: str | Path, *, trained_on: str, is_trainable: bool) -> Any:
    from peft import PeftModel

    try:
        with peft_wrapping():
            return PeftModel.from_pretrained(lm, str(adapter), is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LongqaError(f"{adapter}: cannot load adapter onto {trained_on}: {first}") from None


def _tokenizer(model: str, path: str, adapter: str | Path | None, **kw: Any) -> Any:
    """The adapter's saved tokenizer when it has one, else the base model's."""
    if adapter is not None:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(adapter))
        except (OSError, ValueError):
            pass
    return tokenizer_at(path, model, **kw)
