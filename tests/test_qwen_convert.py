"""Original-Qwen → Qwen2 conversion: logits vs an independent forward from the original equations,
tokenizer ids vs tiktoken, detection and caching."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from longqa.core.errors import LongqaError
from longqa.models.qwen_convert import convert_checkpoint, ensure_converted, is_original_qwen
from longqa.models.qwen_tokenizer import (
    CHATML_TEMPLATE,
    PAT_STR,
    build_qwen_tokenizer,
    special_tokens,
    tiktoken_encoding,
)

CFG = {
    "architectures": ["QWenLMHeadModel"],
    "model_type": "qwen",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "kv_channels": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 192,  # original counts both MLP branches: each is 96 wide
    "vocab_size": 128,
    "layer_norm_epsilon": 1e-5,
    "rotary_emb_base": 50000,
    "rotary_pct": 1.0,
    "seq_length": 64,
    "max_position_embeddings": 256,
    "no_bias": True,
    "use_dynamic_ntk": True,
    "use_logn_attn": True,
}


def make_original_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, ff, V = CFG["hidden_size"], CFG["intermediate_size"] // 2, CFG["vocab_size"]

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.wte.weight": r(V, H, scale=1.0), "lm_head.weight": r(V, H)}
    sd["transformer.ln_f.weight"] = 1 + r(H)
    for i in range(CFG["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + r(H)
        sd[p + "ln_2.weight"] = 1 + r(H)
        sd[p + "attn.c_attn.weight"] = r(3 * H, H)
        sd[p + "attn.c_attn.bias"] = r(3 * H)
        sd[p + "attn.c_proj.weight"] = r(H, H)
        sd[p + "mlp.w1.weight"] = r(ff, H)
        sd[p + "mlp.w2.weight"] = r(ff, H)
        sd[p + "mlp.c_proj.weight"] = r(H, ff)
    return sd


def write_checkpoint(folder: Path, sd: dict[str, torch.Tensor], fmt: str = "safetensors") -> Path:
    """Two shards + index json, the way the original releases are laid out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CFG))
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    wmap = {}
    for n, part in enumerate(halves, 1):
        if fmt == "safetensors":
            fname = f"model-{n:05d}-of-00002.safetensors"
            save_file({k: sd[k].contiguous() for k in part}, str(folder / fname))
        else:
            fname = f"pytorch_model-{n:05d}-of-00002.bin"
            torch.save({k: sd[k] for k in part}, folder / fname)
        wmap.update({k: fname for k in part})
    index = (
        "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    )
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return folder


def reference_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Original Qwen equations (QWenBlock/QWenAttention/QWenMLP, no dynamic-NTK, no log-n)."""
    H, nh, eps = CFG["hidden_size"], CFG["num_attention_heads"], CFG["layer_norm_epsilon"]
    hd, T = H // nh, ids.shape[1]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv = 1.0 / CFG["rotary_emb_base"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()

    def rotary(x):  # x: [B, nh, T, hd]; rotate_half convention of the original code
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = sd["transformer.wte.weight"][ids]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(CFG["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = rms(x, sd[p + "ln_1.weight"])
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(1, T, nh, hd).transpose(1, 2) for t in qkv.split(H, dim=-1))
        q, k = rotary(q), rotary(k)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(1, T, H)
        x = x + o @ sd[p + "attn.c_proj.weight"].T
        h = rms(x, sd[p + "ln_2.weight"])
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_converted_logits_match_original_equations(tmp_path, fmt):
    from transformers import AutoConfig, AutoModelForCausalLM

    sd = make_original_state()
    src = write_checkpoint(tmp_path / "qwen-orig", sd, fmt)
    assert is_original_qwen(src)
    out = convert_checkpoint(src, tmp_path / "qwen2", progress=False)
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "qwen2" and cfg.intermediate_size == 96
    assert cfg.rms_norm_eps == 1e-5 and cfg.max_position_embeddings == 64
    assert cfg.rope_parameters["rope_theta"] == 50000 and not cfg.tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    )
    ids = torch.randint(0, CFG["vocab_size"], (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids).logits
    want = reference_forward(sd, ids)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    # the gate/up assignment matters: swapping w1 and w2 gives clearly different logits
    swapped = dict(sd)
    for i in range(CFG["num_hidden_layers"]):
        p = f"transformer.h.{i}.mlp."
        swapped[p + "w1.weight"], swapped[p + "w2.weight"] = (
            sd[p + "w2.weight"],
            sd[p + "w1.weight"],
        )
    assert (reference_forward(swapped, ids) - got).abs().max() > 1e-2


def test_detection_and_errors(tmp_path):
    sd = make_original_state()
    nameless = write_checkpoint(tmp_path / "a", sd)
    cfg = dict(CFG)
    cfg.pop("model_type")
    cfg.pop("architectures")
    (nameless / "config.json").write_text(json.dumps(cfg))
    assert is_original_qwen(nameless)  # by weight names
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not is_original_qwen(llama) and not is_original_qwen(tmp_path / "missing")
    with pytest.raises(LongqaError, match="not an original-Qwen"):
        convert_checkpoint(llama, tmp_path / "out", progress=False)
    bad = write_checkpoint(
        tmp_path / "bad", {**sd, "transformer.h.0.attn.c_attn.qweight": torch.zeros(2)}
    )
    with pytest.raises(
        LongqaError, match="unexpected tensor 'transformer.h.0.attn.c_attn.qweight'"
    ):
        convert_checkpoint(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    partial = write_checkpoint(
        tmp_path / "partial", {k: v for k, v in sd.items() if "h.1." not in k}
    )
    with pytest.raises(LongqaError, match="lack model.layers.1"):
        convert_checkpoint(partial, tmp_path / "out", progress=False)


def test_ensure_converted_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path / "cache"))
    src = write_checkpoint(tmp_path / "Qwen-Tiny", make_original_state())
    first = ensure_converted(src, progress=False)
    assert first.is_relative_to(tmp_path / "cache" / "converted")
    stamp = (first / "config.json").stat().st_mtime_ns
    again = ensure_converted(src, progress=False)
    assert again == first and (again / "config.json").stat().st_mtime_ns == stamp


SAMPLES = [
    "Hello world! It's 2024, isn't it? The quick brown fox's 12345 jumps.",
    "长文本问答：模型首先复述相关原文，然后回答问题。",
    "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n\n\tdone",
    "<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n<|endoftext|><|extra_7|>",
    "Cafe\u0301 vs Café, naïve   spaces   and tabs\t\there.",
]


def train_ranks(text: str, n_merges: int) -> dict[bytes, int]:
    """A tiny but genuine tiktoken BPE: 256 bytes, then greedy pair merges on regex pieces."""
    import regex

    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(regex.findall(PAT_STR, text))
    seqs = {w: [bytes([b]) for b in w.encode("utf-8")] for w in words}
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:], strict=False):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w, seq in seqs.items():
            i, new = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    new.append(a + b)
                    i += 2
                else:
                    new.append(seq[i])
                    i += 1
            seqs[w] = new
    return ranks


def write_tiktoken(path: Path, ranks: dict[bytes, int]) -> Path:
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tokenizer_ids_match_tiktoken(tmp_path):
    from transformers import AutoTokenizer

    corpus = " ".join(SAMPLES[:3]) * 3 + " the model reads long documents 文档 问题 回答 " * 5
    tik = write_tiktoken(tmp_path / "qwen.tiktoken", train_ranks(corpus, 300))
    enc = tiktoken_encoding(tik)
    fast = build_qwen_tokenizer(tik)
    fast.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    import unicodedata

    for text in SAMPLES:
        want = enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert fast.encode(text, add_special_tokens=False) == want, text
        assert reloaded.encode(text, add_special_tokens=False) == want, text
        assert reloaded.decode(want) == unicodedata.normalize("NFC", text)
    assert reloaded.convert_tokens_to_ids("<|im_end|>") == 151645
    assert reloaded.convert_tokens_to_ids("<|extra_204|>") == special_tokens()["<|extra_204|>"]
    assert reloaded.eos_token == "<|im_end|>" and reloaded.chat_template == CHATML_TEMPLATE
    chat = reloaded.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_conversion_carries_tokenizer_and_bad_tiktoken(tmp_path):
    from transformers import AutoTokenizer

    src = write_checkpoint(tmp_path / "Qwen-Tiny-Chat", make_original_state())
    write_tiktoken(src / "qwen.tiktoken", train_ranks(SAMPLES[0] * 4, 50))
    out = convert_checkpoint(src, tmp_path / "conv", progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.encode("Hello world", add_special_tokens=False) == tiktoken_encoding(
        src / "qwen.tiktoken"
    ).encode("Hello world")
    (tmp_path / "bad.tiktoken").write_text("SGVsbG8= 0\nnot-base64!! x\n")
    with pytest.raises(LongqaError, match=r"bad.tiktoken:2"):
        build_qwen_tokenizer(tmp_path / "bad.tiktoken")


def test_load_converts_original_qwen_on_the_fly(tmp_path, monkeypatch):
    from longqa.models.load import check_supported_checkpoint, load

    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path / "cache"))
    sd = make_original_state(seed=5)
    src = write_checkpoint(tmp_path / "Qwen-Tiny", sd)
    check_supported_checkpoint(str(src))  # original Qwen is a supported checkpoint
    model, _, _ = load(str(src), dtype="float32", attn_implementation="eager")
    assert model.config.model_type == "qwen2"
    assert list((tmp_path / "cache" / "converted").iterdir())
    ids = torch.arange(30)[None] % CFG["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).logits, reference_forward(sd, ids), atol=2e-5, rtol=1e-5
        )
