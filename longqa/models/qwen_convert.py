"""Original-Qwen (Qwen-7B/14B/72B, ``model_type: qwen``) checkpoints → native transformers Qwen2.

Usage::

    from longqa.models.qwen_convert import is_original_qwen, ensure_converted, convert_checkpoint
    if is_original_qwen(path):
        path = ensure_converted(path)        # cached under cache_dir()/converted/, reused later
    convert_checkpoint(src, out)             # `longqa models convert SRC OUT`

The original layout (remote code written for old transformers) maps onto Qwen2 one to one:

================================  =============================================================
original                          Qwen2
================================  =============================================================
``transformer.wte``               ``model.embed_tokens``
``h.N.ln_1`` / ``h.N.ln_2``       ``layers.N.input_layernorm`` / ``post_attention_layernorm``
``h.N.attn.c_attn`` (W, b)        ``q_proj`` / ``k_proj`` / ``v_proj`` (rows split in 3, biases too)
``h.N.attn.c_proj``               ``o_proj`` (no bias)
``h.N.mlp.w2`` / ``w1``           ``gate_proj`` / ``up_proj`` — QWenMLP computes
                                  ``c_proj(w1(x) * silu(w2(x)))``, so w2 is the gated branch
``h.N.mlp.c_proj``                ``down_proj``
``transformer.ln_f`` / lm_head    ``model.norm`` / ``lm_head`` (untied)
================================  =============================================================

Config: ``intermediate_size`` is halved (the original counts both branches), RMSNorm eps comes from
``layer_norm_epsilon``, RoPE base from ``rotary_emb_base``, the window from ``seq_length`` — the
trained window (2048 for Qwen-14B), not ``max_position_embeddings`` (8192 there: how far its
inference-time dynamic NTK reaches); RoPE scaling takes its original window L0 from it.
Qwen's inference-time dynamic-NTK and log-n attention scaling are NOT carried over into the config:
the converted model uses plain RoPE and the RoPE spec decides any scaling — the original behaviour
is ``--rope dynamic-ntk --rope-ntk-variant qwen --rope-logn``, the long-context paraphrasing recipe uses dynamic
YaRN without log-n. The original settings are recorded in ``longqa_conversion.json``. Conversion streams one shard at a time: each output tensor is
read, split and written before the next shard is opened, so two copies of the weights never exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError
from longqa.core.paths import atomic_write_json, cache_dir, keep_umask, replace_folder

log = logging.getLogger(__name__)

MARKER = "longqa_conversion.json"
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_SIMPLE = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_IN_LAYER = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
NOT_CARRIED = (
    "dynamic-NTK and log-n attention are not carried over (the RoPE spec decides; the original "
    "behaviour is --rope dynamic-ntk --rope-ntk-variant qwen --rope-logn)"
)
ORIGINAL_KEYS = ("seq_length", "max_position_embeddings", "use_dynamic_ntk", "use_logn_attn")


def _read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongqaError(f"{cfg}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _weight_names(path: Path) -> list[str]:
    """Tensor names from an index json or safetensors headers (no tensor data is read)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return list(json.loads((path / index).read_text())["weight_map"])
    names: list[str] = []
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            names.extend(fh.keys())
    return names


def is_original_qwen(path: str | Path) -> bool:
    """True for a folder holding an original-Qwen checkpoint (config or weight names say so)."""
    path = Path(path)
    if not path.is_dir():
        return False
    cfg = _read_config(path)
    if cfg.get("model_type") == "qwen" or "QWenLMHeadModel" in (cfg.get("architectures") or []):
        return True
    if cfg.get("model_type"):
        return False
    try:
        names = _weight_names(path)
    except Exception:  # unreadable weights: not ours to judge here
        return False
    return any(n.startswith("transformer.h.") and ".attn.c_attn." in n for n in names)


def qwen2_config(cfg: dict[str, Any], source: str = "config.json") -> Any:
    """Map an original-Qwen config dict onto a ``transformers.Qwen2Config``."""
    from transformers import Qwen2Config

    need = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"]
    need.append("vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise LongqaError(f"{source}: missing field(s) {', '.join(missing)} for an original Qwen")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("kv_channels") or hidden // heads)
    if head_dim * heads != hidden:
        raise LongqaError(f"{source}: kv_channels*heads ({head_dim}*{heads}) != hidden_size")
    if float(cfg.get("rotary_pct", 1.0)) != 1.0:
        raise LongqaError(f"{source}: field 'rotary_pct' must be 1.0 (partial rotary unsupported)")
    if cfg.get("no_bias") is False:
        raise LongqaError(f"{source}: field 'no_bias' is false; Qwen2 has no o_proj/MLP biases")
    window = int(cfg.get("seq_length") or cfg.get("max_position_embeddings") or 2048)
    dtype = "bfloat16" if cfg.get("bf16") else "float16" if cfg.get("fp16") else "float32"
    return Qwen2Config(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]) // 2,
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=window,
        rms_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-6)),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(cfg.get("rotary_emb_base", 1e4)),
        },
        tie_word_embeddings=False,
        use_sliding_window=False,
        eos_token_id=151643 if int(cfg["vocab_size"]) > 151643 else None,
        dtype=dtype,
        architectures=["Qwen2ForCausalLM"],
    )


def convert_tensor(name: str, tensor: Any) -> list[tuple[str, Any]]:
    """One original tensor → its Qwen2 tensor(s); ``[]`` for buffers that are not weights."""
    if name in _SIMPLE:
        return [(_SIMPLE[name], tensor)]
    if name.endswith("rotary_emb.inv_freq"):
        return []
    m = _LAYER.match(name)
    if m:
        i, rest = m.groups()
        pre = f"model.layers.{i}."
        if rest in _IN_LAYER:
            return [(pre + _IN_LAYER[rest], tensor)]
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            if tensor.shape[0] % 3:
                raise LongqaError(f"{name}: first dim {tensor.shape[0]} not divisible by 3")
            q, k, v = (t.clone() for t in tensor.chunk(3, dim=0))  # rows: [q; k; v]
            return [
                (f"{pre}self_attn.{p}_proj.{kind}", t)
                for p, t in zip("qkv", (q, k, v), strict=True)
            ]
    raise LongqaError(
        f"unexpected tensor '{name}' in an original-Qwen checkpoint (quantised or modified "
        "checkpoints are not supported; use the full-precision release)"
    )


def _shards(src: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (src / index).is_file():
            wmap = json.loads((src / index).read_text())["weight_map"]
            return [src / f for f in dict.fromkeys(wmap.values())]
    shards = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not shards:
        raise LongqaError(f"{src}: no *.safetensors or pytorch_model*.bin weights found")
    return shards


def _iter_shard(shard: Path) -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) lazily: safetensors are memory-mapped tensor by tensor."""
    if not shard.is_file():
        raise LongqaError(f"weight shard listed in the index is missing: {shard}")
    if shard.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key)
    else:
        import torch

        try:
            state = torch.load(str(shard), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(str(shard), map_location="cpu", weights_only=True)
        for key in list(state):
            yield key, state.pop(key)


def _copy_tokenizer(src: Path, out: Path) -> None:
    tik = src / "qwen.tiktoken"
    if tik.is_file():
        from longqa.models.qwen_tokenizer import build_qwen_tokenizer

        build_qwen_tokenizer(tik, chat="chat" in str(src.resolve()).lower()).save_pretrained(
            str(out)
        )
    elif (src / "tokenizer.json").is_file():
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / f).is_file():
                shutil.copy2(src / f, out / f)
    else:
        log.warning("%s: no qwen.tiktoken or tokenizer.json; the output has no tokenizer", src)


def convert_checkpoint(src: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Convert an original-Qwen checkpoint folder into a Qwen2 folder ``out`` (atomic)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise LongqaError(f"checkpoint folder not found: {src}")
    if not is_original_qwen(src):
        raise LongqaError(f"{src}: not an original-Qwen checkpoint (config model_type 'qwen')")
    original = _read_config(src)
    config = qwen2_config(original, str(src / "config.json"))
    log.warning("converting %s to Qwen2: %s", src, NOT_CARRIED)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = _shards(src)
    weight_map: dict[str, str] = {}
    total = 0
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"converting {src.name}", total=len(shards))
        for n, shard in enumerate(shards, 1):
            fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            part: dict[str, torch.Tensor] = {}
            for name, tensor in _iter_shard(shard):
                for new, t in convert_tensor(name, tensor):
                    part[new] = t.contiguous()
                    weight_map[new] = fname
                    total += t.numel() * t.element_size()
            save_file(part, str(tmp / fname), metadata={"format": "pt"})
            del part
            bar.advance(task)
    expected = _expected_keys(config)
    missing = sorted(expected - set(weight_map))
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LongqaError(f"{src}: converted weights lack {missing[0]} (+{len(missing) - 1} more)")
    atomic_write_json(
        tmp / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )
    config.save_pretrained(str(tmp))
    gen = GenerationConfig(
        eos_token_id=[151645, 151643] if config.vocab_size > 151645 else None,
        pad_token_id=151643 if config.vocab_size > 151643 else None,
    )
    gen.save_pretrained(str(tmp))
    _copy_tokenizer(src, tmp)
    atomic_write_json(
        tmp / MARKER,
        {
            "source": str(src.resolve()),
            "note": NOT_CARRIED,
            "original": {k: original[k] for k in ORIGINAL_KEYS if k in original},
        },
    )
    keep_umask(tmp)  # safetensors writes 600
    replace_folder(tmp, out)  # the previous folder stays until this one is in place
    return out


def _expected_keys(config: Any) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    per = list(_IN_LAYER.values()) + [
        f"self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")
    ]
    for i in range(config.num_hidden_layers):
        keys.update(f"model.layers.{i}.{p}" for p in per)
    return keys


def _fingerprint(src: Path) -> str:
    h = hashlib.sha256(str(src.resolve()).encode())
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def ensure_converted(path: str | Path, progress: bool = True) -> Path:
    """Return a cached Qwen2 conversion of ``path`` (converting once; reused while unchanged)."""
    src = Path(path)
    out = cache_dir() / "converted" / f"{src.resolve().name}-{_fingerprint(src)}"
    if (out / MARKER).is_file():
        return out
    log.warning("original-Qwen checkpoint %s: converting once into %s", src, out)
    return convert_checkpoint(src, out, progress=progress)
