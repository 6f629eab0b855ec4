"""RoPE as the reference implementations compute it: the dynamic scale per sample (packed rows,
padded batches), original Qwen's log-n attention, and the trained window taken from the checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_llama_config
from transformers import LlamaForCausalLM

from longqa.patch.rope import apply_rope_scaling, revert_rope_scaling, sample_lengths

L0 = 32
SHORT, LONG = 20, 100  # one sample inside the original window, one far beyond it
DYNAMIC = [
    {"method": "dynamic-yarn", "margin": 8},
    {"method": "dynamic-ntk", "factor": 4.0},
    {"method": "dynamic-ntk", "ntk_variant": "qwen"},
]


def _model():
    torch.manual_seed(0)
    cfg = tiny_llama_config(max_position_embeddings=L0, pad_token_id=0, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def test_sample_lengths_of_packed_and_padded_rows():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sample_lengths(packed).tolist() == [[3, 3, 3, 2, 2, 4, 4, 4, 4]]
    left_padded = torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])  # HF fills pads with 1
    assert sample_lengths(left_padded)[:, -1].tolist() == [3, 5]
    assert sample_lengths(torch.tensor([[57]])).tolist() == [[58]]  # a decoding step


@pytest.mark.parametrize(
    "spec", DYNAMIC, ids=lambda s: s["method"] + "-" + s.get("ntk_variant", "")
)
def test_packed_row_gives_each_sample_its_own_scale(spec):
    model = _model()
    apply_rope_scaling(model, spec)
    short, long = _ids(SHORT, 1), _ids(LONG, 2)
    with torch.no_grad():
        alone_short = model(short).logits[0]
        alone_long = model(long).logits[0]
        for first, second in ((short, long), (long, short)):
            row = torch.cat([first, second], dim=1)
            pos = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])])[None]
            packed = model(row, position_ids=pos, use_cache=False).logits[0]  # training-style
            a, b = packed[: first.shape[1]], packed[first.shape[1] :]
            want_a, want_b = (
                (alone_short, alone_long) if first is short else (alone_long, alone_short)
            )
            torch.testing.assert_close(a, want_a, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(b, want_b, atol=2e-5, rtol=1e-5)
    # the scale matters: the short sample under the long sample's scale gives other logits
    revert_rope_scaling(model)
    seq = LONG + (spec.get("margin", 0) if spec["method"] == "dynamic-yarn" else 0)
    static = {"dynamic-yarn": {"method": "yarn", "factor": seq / L0}}.get(spec["method"])
    if static is not None:
        apply_rope_scaling(model, static)
        with torch.no_grad():
            assert (model(short).logits[0] - alone_short).abs().max() > 1e-3


@pytest.mark.parametrize("spec", DYNAMIC[:2], ids=lambda s: s["method"])
def test_padded_batch_gives_each_sample_its_own_scale(spec):
    model = _model()
    apply_rope_scaling(model, spec)
    short, long = _ids(SHORT, 3), _ids(LONG, 4)
    batch = torch.zeros(2, LONG, dtype=torch.long)
    mask = torch.zeros(2, LONG, dtype=torch.long)
    batch[0, LONG - SHORT :], mask[0, LONG - SHORT :] = short[0], 1
    batch[1], mask[1] = long[0], 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # what generate() passes
    with torch.no_grad():
        both = model(batch, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(
            both[0, LONG - SHORT :], model(short).logits[0], atol=2e-5, rtol=1e-5
        )
        torch.testing.assert_close(both[1], model(long).logits[0], atol=2e-5, rtol=1e-5)


def test_batched_generation_keeps_each_rows_scale_while_decoding():
    from eval_fixtures import tiny_llama, tiny_tokenizer

    from longqa.config.recipe import RopeConfig
    from longqa.eval.runner import GreedyGenerator

    tok, model = tiny_tokenizer(), tiny_llama(max_position_embeddings=L0)
    spec = RopeConfig(method="dynamic-yarn", margin=4)
    apply_rope_scaling(model, spec)
    prompts = [_ids(SHORT, 5)[0].tolist(), _ids(70, 6)[0].tolist()]
    gen = GreedyGenerator(model, tok, rope=spec, reuse_prefix=False)
    single = [gen.generate_ids([p], 6)[0] for p in prompts]
    assert gen.generate_ids(prompts, 6, batch_size=2) == single


# ------------------------------------------------------------------ original Qwen: dynamic NTK + log-n
def qwen_reference(sd, cfg, ids, *, dynamic_ntk: bool, logn: bool) -> torch.Tensor:
    """Original Qwen's forward (modeling_qwen.py) at inference: RotaryEmbedding with
    ``base·alpha^(d/(d-2))``, ``alpha = max(2^ceil(log2(T/seq_length) + 1) - 1, 1)`` when
    ``T > seq_length``; queries × ``log(i)/log(seq_length)`` for 1-based ``i > seq_length``."""
    import torch.nn.functional as F

    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    hd, T, L = H // nh, ids.shape[1], cfg["seq_length"]
    alpha = 1.0
    if dynamic_ntk and T > L:
        alpha = max(2 ** math.ceil(math.log(T / L, 2) + 1) - 1, 1)
    base = cfg["rotary_emb_base"] * alpha ** (hd / (hd - 2))
    inv = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    emb = torch.cat([torch.outer(torch.arange(T, dtype=torch.float64), inv)] * 2, -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    logn_list = [math.log(i, L) if i > L else 1 for i in range(1, T + 1)]
    logn_t = torch.tensor(logn_list, dtype=torch.float32)[None, None, :, None]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rotary(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = sd["transformer.wte.weight"][ids]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = rms(x, sd[p + "ln_1.weight"])
        qkv = h @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(1, T, nh, hd).transpose(1, 2) for t in qkv.split(H, dim=-1))
        q, k = rotary(q), rotary(k)
        if logn:
            q = q * logn_t
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(1, T, H) @ sd[p + "attn.c_proj.weight"].T
        h = rms(x, sd[p + "ln_2.weight"])
        a1, a2 = h @ sd[p + "mlp.w1.weight"].T, h @ sd[p + "mlp.w2.weight"].T
        x = x + (a1 * F.silu(a2)) @ sd[p + "mlp.c_proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


@pytest.fixture(scope="module")
def converted_qwen(tmp_path_factory):
    from test_qwen_convert import CFG, make_original_state, write_checkpoint
    from transformers import AutoModelForCausalLM

    from longqa.models.qwen_convert import convert_checkpoint

    tmp = tmp_path_factory.mktemp("qwen")
    sd = make_original_state(seed=7)
    out = convert_checkpoint(write_checkpoint(tmp / "orig", sd), tmp / "qwen2", progress=False)
    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return sd, CFG, model


def test_logn_factors_match_qwen_list():
    from longqa.patch.logn import logn_factors

    L = 64
    want = [math.log(i, L) if i > L else 1 for i in range(1, 301)]
    got = logn_factors(torch.arange(300)[None], L)[0, :, 0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))


def test_original_qwen_dynamic_ntk_and_logn_reproduced(converted_qwen):
    sd, cfg, model = converted_qwen
    T = 150  # beyond seq_length 64: alpha 7, log-n up to log(150)/log(64)
    ids = torch.randint(0, cfg["vocab_size"], (1, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        native = model(ids).logits
        apply_rope_scaling(model, {"method": "dynamic-ntk", "ntk_variant": "qwen", "logn": True})
        got = model(ids).logits
        want = qwen_reference(sd, cfg, ids, dynamic_ntk=True, logn=True)
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)
        no_logn = qwen_reference(sd, cfg, ids, dynamic_ntk=True, logn=False)
        assert (got - no_logn).abs().max() > 1e-3  # log-n changes the result
        model.train()  # original Qwen applies log-n only at inference
        torch.testing.assert_close(model(ids).logits, no_logn, atol=5e-5, rtol=1e-5)
        model.eval()
        revert_rope_scaling(model)
        assert torch.equal(model(ids).logits, native)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_logn_follows_a_lora_wrapper_added_after_patching(converted_qwen):
    from peft import LoraConfig, get_peft_model

    from longqa.models.load import peft_wrapping

    sd, cfg, model = converted_qwen
    ids = torch.randint(0, cfg["vocab_size"], (1, 120), generator=torch.Generator().manual_seed(3))
    spec = {"method": "dynamic-ntk", "ntk_variant": "qwen", "logn": True}
    apply_rope_scaling(model, spec)
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False, lora_dropout=0.0)
    with peft_wrapping():  # no deprecation warning from peft's checkpointing probe
        peft_model = get_peft_model(model, lora).eval()
    with torch.no_grad():
        got = peft_model(ids).logits
        merged = peft_model.merge_and_unload()  # LoRA folded into plain q_proj weights
        apply_rope_scaling(merged, spec)
        torch.testing.assert_close(got, merged(ids).logits, atol=5e-5, rtol=1e-5)
    revert_rope_scaling(merged)


# ------------------------------------------------------ the trained window comes from the checkpoint
def test_qwen14b_recipe_scales_from_the_checkpoints_seq_length(tmp_path):
    """Original Qwen-14B: seq_length 2048 (trained window), max_position_embeddings 8192 (its
    dynamic-NTK reach). At 32K, dynamic YaRN must use s = (32768 + margin) / 2048."""
    import json

    from test_qwen_convert import CFG, make_original_state, write_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    from longqa.config.recipe import load_recipe
    from longqa.models.qwen_convert import convert_checkpoint
    from longqa.ops.rope_scaling import yarn_inv_freq, yarn_mscale

    src = write_checkpoint(tmp_path / "orig", make_original_state())
    cfg = {**CFG, "seq_length": 2048, "max_position_embeddings": 8192}
    (src / "config.json").write_text(json.dumps(cfg))
    out = convert_checkpoint(src, tmp_path / "qwen2", progress=False)
    assert AutoConfig.from_pretrained(out).max_position_embeddings == 2048  # seq_length kept
    marker = json.loads((out / "longqa_conversion.json").read_text())
    assert marker["original"]["seq_length"] == 2048 and marker["original"]["use_logn_attn"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    spec = load_recipe("qwen14b-yarn32k").rope
    apply_rope_scaling(model, spec)
    rotary = model.model.rotary_emb
    hd = CFG["hidden_size"] // CFG["num_attention_heads"]
    rotary(torch.zeros(1, 1, hd), torch.arange(32768)[None])
    s = (32768 + spec.margin) / 2048
    want = yarn_inv_freq(hd, float(CFG["rotary_emb_base"]), s, 2048, 32.0, 1.0)
    assert rotary.original_length == 2048
    torch.testing.assert_close(rotary.inv_freq, want)
    assert rotary.attention_scaling == pytest.approx(yarn_mscale(s))  # s = 16.25, not 4.06
