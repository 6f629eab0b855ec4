"""A merged Hugging Face Llama/Qwen2 model → one GGUF file llama.cpp (llama-server, Ollama,
llama-cpp-python) runs with the RoPE the model was trained with.

Usage (``longqa export --adapter A --gguf out.gguf --type f16`` does this after merging)::

    from longqa.models.export_gguf import write_gguf, check_gguf_rope_spec
    check_gguf_rope_spec(spec)                      # before an expensive merge: fail early
    write_gguf(model.state_dict(), model.config, "out.gguf", tokenizer="merged_dir", out_type="q8_0")

Layout as llama.cpp's ``convert_hf_to_gguf.py`` writes it (read there, written here with the
``gguf`` package): tensor names from ``gguf.get_tensor_name_map``; for the ``llama`` architecture
the Q/K projection rows are permuted from transformers' rotate-half order into the interleaved
pairs llama.cpp's NORM rope type rotates; 1-D tensors (norms, biases) stay float32.

RoPE metadata from the config's ``rope_parameters`` (as :func:`longqa.models.export_hf.hf_rope_parameters`
writes them): ``rope.freq_base``; ``rope.scaling.type`` none/linear/yarn; ``rope.scaling.factor``;
``rope.scaling.original_context_length``; ``context_length`` = the scaled window. YaRN's attention
factor: transformers multiplies cos/sin by ``attention_factor`` (default 0.1·ln s + 1), llama.cpp by
``(0.1·ln s + 1) · rope.scaling.attn_factor`` (``llama-context.cpp`` cancels and re-applies its own
mscale), so the file stores ``attention_factor / (0.1·ln s + 1)`` — 1.0 for the default. Llama 3.1
scaling has no metadata form: it goes into the ``rope_freqs`` tensor (per-frequency divisors, as
llama.cpp's converter writes it; llama architecture only). llama.cpp's llama/qwen2 loaders read no
YaRN beta keys (always 32/1): other betas are an error naming the method.

The tokenizer comes from a GGUF file (its ``tokenizer.*`` fields copied as they are: exact for models
that came from GGUF, like the ``smollm2-135m`` alias) or from an HF folder with a BPE
``tokenizer.json`` (tokens, types, merges, special ids and chat template, pre-tokenizer by model).
The file is written next to ``out`` and renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longqa.core.errors import LongqaError

log = logging.getLogger(__name__)

OUT_TYPES = ("f32", "f16", "q8_0")
# HF model_type → (GGUF architecture, Q/K rows permuted into llama.cpp's interleaved rope order)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
YARN_BETAS = (32.0, 1.0)  # the only ones llama.cpp's llama/qwen2 loaders use
# llama.cpp pre-tokenizer names (llama-vocab.cpp) of the BPE tokenizers longqa's models use
_PRE_TOKENIZERS = {
    ("llama", 49152): "smollm",
    ("llama", 128256): "llama-bpe",
    ("qwen2", None): "qwen2",
}


def check_gguf_rope_spec(spec: Any) -> None:
    """One-line error for a longqa RoPE spec llama.cpp cannot express (call before merging)."""
    if spec is None:
        return
    method = spec.method
    if method in ("yarn", "dynamic-yarn") and (spec.beta_fast, spec.beta_slow) != YARN_BETAS:
        raise LongqaError(
            f"rope method '{method}' with beta_fast={spec.beta_fast}, beta_slow={spec.beta_slow} "
            "cannot be written to GGUF: llama.cpp's llama/qwen2 loaders always use 32 and 1"
        )


def gguf_rope_fields(rope_parameters: Mapping[str, Any], window: int) -> dict[str, Any]:
    """The RoPE metadata (key suffix after ``<arch>.`` → value) for transformers ``rope_parameters``."""
    params = dict(rope_parameters)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    fields: dict[str, Any] = {
        "context_length": int(window),
        "rope.freq_base": float(params["rope_theta"]),
    }
    if rope_type in ("default", "llama3"):  # llama3: per-frequency factors, rope_freqs tensor
        fields["rope.scaling.type"] = "none"
        return fields
    if rope_type not in ("linear", "yarn"):
        raise LongqaError(
            f"rope_type '{rope_type}' cannot be written to GGUF (llama.cpp takes none, linear, "
            "yarn, and llama3 as frequency factors)"
        )
    factor = float(params["factor"])
    fields["rope.scaling.type"] = rope_type
    fields["rope.scaling.factor"] = factor
    # the pretraining window: transformers keeps it for yarn; linear's is the window / factor
    # (transformers warns on original_max_position_embeddings for linear, so export omits it)
    original = params.get("original_max_position_embeddings") or round(window / factor)
    fields["rope.scaling.original_context_length"] = int(original)
    if rope_type == "yarn":
        betas = (float(params.get("beta_fast", 32.0)), float(params.get("beta_slow", 1.0)))
        if betas != YARN_BETAS:
            raise LongqaError(
                f"rope_type 'yarn' with beta_fast={betas[0]}, beta_slow={betas[1]} cannot be "
                "written to GGUF: llama.cpp's llama/qwen2 loaders always use 32 and 1"
            )
        own = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        fields["rope.scaling.attn_factor"] = float(params.get("attention_factor") or own) / own
    return fields


def rope_freq_factors(rope_parameters: Mapping[str, Any], head_dim: int) -> Any:
    """Llama 3.1 scaling as llama.cpp's ``rope_freqs`` tensor: float32 ``[head_dim/2]`` divisors of
    each base frequency (theta_i / f_i = the scaled theta_i), or None for other rope types."""
    params = dict(rope_parameters)
    if (params.get("rope_type") or params.get("type")) != "llama3":
        return None
    from longqa.ops.rope_scaling import compute_rope, default_inv_freq

    spec = {
        "method": "llama3",
        "factor": float(params["factor"]),
        "low_freq_factor": float(params.get("low_freq_factor", 1.0)),
        "high_freq_factor": float(params.get("high_freq_factor", 4.0)),
    }
    base, l0 = float(params["rope_theta"]), int(params["original_max_position_embeddings"])
    scaled, _ = compute_rope(
        spec, head_dim=head_dim, base=base, original_max_position_embeddings=l0
    )
    return (default_inv_freq(head_dim, base) / scaled).numpy().astype("float32")


def _config_dict(config: Any) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def _permute(w: Any, n_head: int) -> Any:
    """Rotate-half row order → interleaved pairs, per head (as ``convert_hf_to_gguf`` does)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tensor_data(name: str, array: Any, out_type: str) -> tuple[Any, Any]:
    """(data, raw_dtype) in ``out_type``; 1-D tensors and rows not a multiple of 32 stay wider."""
    import gguf
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.float32)
    if a.ndim == 1 or out_type == "f32":
        return a, None
    if out_type == "q8_0" and a.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(a, q), q
    return a.astype(np.float16), None


def write_gguf(
    state_dict: Mapping[str, Any],
    config: Any,
    out: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str],
    out_type: str = "f16",
    name: str | None = None,
) -> Path:
    """Write ``state_dict`` (a merged HF causal LM, torch tensors or arrays) with ``config`` (its
    transformers config or config dict, RoPE in ``rope_parameters``) and the tokenizer of
    ``tokenizer`` (an HF folder or a GGUF file) to the GGUF file ``out``. Returns ``out``."""
    import gguf

    if out_type not in OUT_TYPES:
        raise LongqaError(f"--type {out_type}: expected one of {', '.join(OUT_TYPES)}")
    cfg = _config_dict(config)
    model_type = cfg.get("model_type")
    if model_type not in ARCHITECTURES:
        raise LongqaError(
            f"GGUF export supports model types {', '.join(ARCHITECTURES)} (got '{model_type}')"
        )
    arch, permute = ARCHITECTURES[model_type]
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or 0)
    n_kv = n_kv or n_head
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope = {"rope_theta": cfg.get("rope_theta", 10000.0), **rope}
    rope_fields = gguf_rope_fields(rope, int(cfg["max_position_embeddings"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or out.stem)
        writer.add_block_count(int(cfg["num_hidden_layers"]))
        writer.add_embedding_length(int(cfg["hidden_size"]))
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(int(cfg["vocab_size"]))
        ftype = {"f32": 0, "f16": 1, "q8_0": 7}[out_type]  # gguf.LlamaFileType
        writer.add_file_type(ftype)
        for key, value in rope_fields.items():
            full = f"{arch}.{key}"
            if isinstance(value, str):
                writer.add_string(full, value)
            elif isinstance(value, int):
                writer.add_uint32(full, value)
            else:
                writer.add_float32(full, value)
        _add_tokenizer(writer, Path(tokenizer), model_type, int(cfg["vocab_size"]))
        factors = rope_freq_factors(rope, head_dim)
        if factors is not None:
            if arch != "llama":
                raise LongqaError(f"rope_type 'llama3' cannot be written to GGUF for {arch} models")
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
        names = gguf.get_tensor_name_map(
            getattr(gguf.MODEL_ARCH, arch.upper()), int(cfg["num_hidden_layers"])
        )
        tied = bool(cfg.get("tie_word_embeddings"))
        for hf_name, tensor in state_dict.items():
            if hf_name == "lm_head.weight" and tied:
                continue
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise LongqaError(f"GGUF export: no llama.cpp tensor name for '{hf_name}'")
            array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else tensor
            if permute and hf_name.endswith("q_proj.weight"):
                array = _permute(array, n_head)
            elif permute and hf_name.endswith("k_proj.weight"):
                array = _permute(array, n_kv)
            data, raw = _tensor_data(target, array, out_type)
            writer.add_tensor(target, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def _add_tokenizer(writer: Any, source: Path, model_type: str, vocab_size: int) -> None:
    if source.is_file() and source.suffix == ".gguf":
        _copy_gguf_tokenizer(writer, source)
    else:
        _add_hf_bpe_tokenizer(writer, source, model_type, vocab_size)


def _copy_gguf_tokenizer(writer: Any, source: Path) -> None:
    """Every ``tokenizer.*`` field of ``source`` as it is (same vocabulary, pre-tokenizer, template)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _add_hf_bpe_tokenizer(writer: Any, folder: Path, model_type: str, vocab_size: int) -> None:
    """tokens/types/merges/special ids/chat template of an HF BPE tokenizer (``gpt2`` model)."""
    import gguf
    from transformers import AutoTokenizer

    spec = folder / "tokenizer.json"
    if not spec.is_file():
        raise LongqaError(f"{folder}: no tokenizer.json (GGUF export needs a BPE tokenizer)")
    kind = json.loads(spec.read_text(encoding="utf-8")).get("model", {}).get("type")
    if kind != "BPE":
        raise LongqaError(f"{spec}: tokenizer model '{kind}' (GGUF export writes BPE tokenizers)")
    tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = tok.get_vocab()
    added = tok.added_tokens_decoder
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    pre = _PRE_TOKENIZERS.get((model_type, vocab_size)) or _PRE_TOKENIZERS.get((model_type, None))
    if pre is None:
        log.warning(
            "%s: no known llama.cpp pre-tokenizer for a %s vocabulary of %d tokens; writing "
            "'default' (llama.cpp may split text differently from transformers)",
            folder,
            model_type,
            vocab_size,
        )
        pre = "default"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer)
    if tok.chat_template and not writer_has(writer, gguf.Keys.Tokenizer.CHAT_TEMPLATE):
        writer.add_chat_template(tok.chat_template)


def writer_has(writer: Any, key: str) -> bool:
    return any(key in kv for kv in writer.kv_data)


def tokenizer_source(base: str) -> Path:
    """Where the tokenizer of ``base`` is best read: the GGUF file a cached model was converted
    from (exact vocabulary and pre-tokenizer), else its HF folder."""
    from longqa.models.checkpoints import resolve_for_loading
    from longqa.models.gguf_import import MARKER

    folder = Path(resolve_for_loading(base))
    marker = folder / MARKER
    if marker.is_file():
        source = Path(json.loads(marker.read_text(encoding="utf-8")).get("source", ""))
        if source.is_file():
            return source
    return folder


def write_gguf_from_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    out_type: str = "f16",
    tokenizer: str | os.PathLike[str] | None = None,
) -> Path:
    """:func:`write_gguf` for a merged model saved by ``longqa export --merge`` (config.json with
    the exported RoPE, safetensors shards, tokenizer files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    state: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    if not state:
        raise LongqaError(f"{folder}: no *.safetensors weights to write to GGUF")
    return write_gguf(state, cfg, out, tokenizer=tokenizer or folder, out_type=out_type)
