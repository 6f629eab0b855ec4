"""apply/revert RoPE scaling on tiny random Llama/Qwen2 models vs natively configured ones."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_SHAPE
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from longqa.config.recipe import RopeConfig
from longqa.config.rope_spec import rope_spec_from_options
from longqa.core.errors import LongqaError
from longqa.patch.rope import (
    NO_FIXED_WINDOW,
    LongqaRotaryEmbedding,
    addressable_length,
    apply_rope_scaling,
    get_rope_spec,
    revert_rope_scaling,
)

L0 = 32
ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def _config(arch: str, rope_parameters: dict | None = None, max_pos: int = L0):
    cfg_cls, _ = ARCHS[arch]
    return cfg_cls(
        **TINY_SHAPE,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _model(arch: str, rope_parameters: dict | None = None, max_pos: int = L0, state=None):
    torch.manual_seed(0)
    model = ARCHS[arch][1](_config(arch, rope_parameters, max_pos)).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 128, (2, 3 * L0), generator=torch.Generator().manual_seed(1))


NATIVE_CASES = [
    ({"rope_type": "linear", "factor": 4.0}, {"method": "linear", "factor": 4.0}),
    (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
        {"method": "yarn", "factor": 4.0},
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": L0,
        },
        {"method": "llama3", "factor": 8.0},
    ),
    ({"rope_type": "dynamic", "factor": 2.0}, {"method": "dynamic-ntk", "factor": 2.0}),
]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize(
    ("native", "spec"), NATIVE_CASES, ids=[c[1]["method"] for c in NATIVE_CASES]
)
def test_patched_matches_native_and_reverts_exactly(arch, native, spec, ids):
    model = _model(arch)
    original = _logits(model, ids)
    rotary = model.model.rotary_emb
    native_max = L0 if native["rope_type"] == "dynamic" else int(L0 * native["factor"])
    reference = _model(
        arch, {**native, "rope_theta": 10000.0}, max_pos=native_max, state=model.state_dict()
    )
    expected = _logits(reference, ids)

    assert apply_rope_scaling(model, spec) is model
    assert isinstance(model.model.rotary_emb, LongqaRotaryEmbedding)
    patched = _logits(model, ids)
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(patched, original, atol=1e-4)  # the scaling did something
    assert get_rope_spec(model) == RopeConfig(**spec)

    revert_rope_scaling(model)
    assert model.model.rotary_emb is rotary
    assert get_rope_spec(model) is None
    assert torch.equal(_logits(model, ids), original)


def test_reapply_replaces_and_none_reverts(ids):
    model = _model("llama")
    original = _logits(model, ids)
    rotary = model.model.rotary_emb
    apply_rope_scaling(model, {"method": "yarn", "factor": 2.0})
    apply_rope_scaling(model, RopeConfig(method="linear", factor=4.0))
    assert model.model.rotary_emb.original_module is rotary
    assert get_rope_spec(model).method == "linear"
    apply_rope_scaling(model, rope_spec_from_options("none"))
    assert model.model.rotary_emb is rotary
    assert torch.equal(_logits(model, ids), original)


def test_abf_equals_native_base_change(ids):
    model = _model("qwen2")
    apply_rope_scaling(model, {"method": "abf", "base": 500000.0})
    reference = _model(
        "qwen2", {"rope_type": "default", "rope_theta": 500000.0}, state=model.state_dict()
    )
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), rtol=0, atol=0)


def test_attention_factor_reaches_cos_sin():
    model = _model("llama")
    apply_rope_scaling(model, {"method": "yarn", "factor": 4.0})
    x = torch.zeros(1, 5, 64)
    cos, sin = model.model.rotary_emb(x, torch.arange(5)[None])
    assert cos.shape == (1, 5, 16)
    assert cos[0, 0, 0].item() == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)


def test_through_peft_wrapper(ids):
    from peft import LoraConfig, get_peft_model

    from longqa.models.load import peft_wrapping

    base = _model("llama")
    original = _logits(base, ids)
    with peft_wrapping():  # peft probes a deprecated transformers name
        peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    apply_rope_scaling(peft_model, {"method": "linear", "factor": 2.0})
    assert get_rope_spec(peft_model).factor == 2.0
    assert isinstance(base.model.rotary_emb, LongqaRotaryEmbedding)
    assert not torch.allclose(_logits(peft_model, ids), original, atol=1e-4)
    revert_rope_scaling(peft_model)
    assert torch.equal(_logits(peft_model, ids), original)


def test_inv_freq_stays_float32_after_dtype_change(ids):
    model = _model("llama")
    apply_rope_scaling(model, {"method": "yarn", "factor": 4.0})
    fp32 = model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    assert torch.equal(model.model.rotary_emb.inv_freq, fp32)
    cos, _ = model.model.rotary_emb(
        torch.zeros(1, 3, 64, dtype=torch.bfloat16), torch.arange(3)[None]
    )
    assert cos.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", list(ARCHS))
def test_dynamic_scale_fixed_during_decoding(arch):
    margin, prompt_len, new_tokens = 8, 40, 6
    model = _model(arch)
    apply_rope_scaling(model, {"method": "dynamic-yarn", "margin": margin})
    rotary = model.model.rotary_emb
    prompt = torch.randint(3, 128, (1, prompt_len), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.generate(
            prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=True,
        )
    assert rotary.fixed_seq_len == prompt_len and rotary.num_rescales == 1
    gen_logits = torch.stack(out.logits, dim=1)[0]  # [new_tokens, V]
    full = out.sequences[:, :-1]

    def static_logits(factor: float) -> torch.Tensor:
        apply_rope_scaling(model, {"method": "yarn", "factor": factor})
        logits = _logits(model, full)[0, prompt_len - 1 :]
        revert_rope_scaling(model)
        return logits

    prefill_scale = (prompt_len + margin) / L0
    torch.testing.assert_close(gen_logits, static_logits(prefill_scale), rtol=1e-4, atol=1e-4)
    # rescaling at each decoding step would have given other logits
    last_scale = (prompt_len + new_tokens - 1 + margin) / L0
    assert not torch.allclose(gen_logits, static_logits(last_scale), atol=1e-4)

    # a new prefill recomputes the scale
    apply_rope_scaling(model, {"method": "dynamic-yarn", "margin": margin})
    rotary = model.model.rotary_emb
    longer = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(3))
    got = _logits(model, longer)
    assert rotary.fixed_seq_len == 60
    apply_rope_scaling(model, {"method": "yarn", "factor": (60 + margin) / L0})
    torch.testing.assert_close(got, _logits(model, longer), rtol=1e-5, atol=1e-5)


def test_dynamic_single_token_at_position_zero_is_a_new_prefill():
    model = _model("llama")
    apply_rope_scaling(model, {"method": "dynamic-ntk", "factor": 2.0})
    rotary = model.model.rotary_emb
    x = torch.zeros(1, 1, 64)
    rotary(torch.zeros(1, 100, 64), torch.arange(100)[None])
    assert rotary.fixed_seq_len == 100
    rotary(x, torch.tensor([[100]]))  # decoding: kept
    assert rotary.fixed_seq_len == 100
    rotary(x, torch.tensor([[0]]))  # fresh sequence: recomputed
    assert rotary.fixed_seq_len == 1


def test_rope_spec_from_options():
    assert rope_spec_from_options(None, factor=4.0) is None
    spec = rope_spec_from_options("yarn", factor=4.0, original_length=2048, margin=None)
    assert spec == RopeConfig(method="yarn", factor=4.0, original_max_position_embeddings=2048)
    assert rope_spec_from_options("none") == RopeConfig()
    with pytest.raises(LongqaError, match="unknown rope method 'bogus'; available: none"):
        rope_spec_from_options("bogus")
    with pytest.raises(LongqaError, match="factor must be >= 1"):
        rope_spec_from_options("linear", factor=0.5)
    with pytest.raises(LongqaError, match="'yarn' needs a factor"):
        rope_spec_from_options("yarn")
    with pytest.raises(LongqaError, match="unknown rope option 'fator'"):
        rope_spec_from_options("yarn", fator=2.0)


def test_addressable_length():
    cfg = _config("llama", max_pos=8192)
    assert addressable_length(cfg, None) == 8192
    assert addressable_length(cfg, RopeConfig()) == 8192
    assert addressable_length(cfg, {"method": "yarn", "factor": 4.0}) == 32768
    assert addressable_length(cfg, {"method": "dynamic-yarn"}) is None
    assert addressable_length(cfg, {"method": "abf", "base": 5e5}) is None
    spec = {"method": "abf", "base": 5e5, "max_position_embeddings": 32768}
    assert addressable_length(cfg, spec) == 32768
    spec = {"method": "linear", "factor": 2.0, "original_max_position_embeddings": 4096}
    assert addressable_length(cfg, spec) == 8192


def test_patched_config_announces_the_window_and_reverts():
    model = _model("qwen2")
    native = (model.config.max_position_embeddings, dict(model.config.rope_parameters))
    apply_rope_scaling(model, {"method": "yarn", "factor": 4.0})
    assert model.config.max_position_embeddings == 4 * L0
    assert model.config.rope_parameters["original_max_position_embeddings"] == L0
    assert addressable_length(model.config, get_rope_spec(model)) == 4 * L0
    apply_rope_scaling(model, {"method": "dynamic-yarn"})  # re-apply: no limit of its own
    assert model.config.max_position_embeddings == NO_FIXED_WINDOW
    apply_rope_scaling(model, {"method": "abf", "base": 5e5, "max_position_embeddings": 3 * L0})
    assert model.config.max_position_embeddings == 3 * L0
    revert_rope_scaling(model)
    assert (model.config.max_position_embeddings, model.config.rope_parameters) == native


def test_unsupported_model_is_an_error():
    with pytest.raises(LongqaError, match="no rotary embedding module"):
        apply_rope_scaling(torch.nn.Linear(2, 2), {"method": "linear", "factor": 2.0})


@pytest.mark.slow
@pytest.mark.model
def test_real_smollm2_yarn_matches_transformers_and_reverts():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from longqa.models.checkpoints import alias_gguf_path
    from longqa.models.load import load

    try:
        alias_gguf_path("smollm2-135m")
    except LongqaError as exc:
        pytest.skip(str(exc))

    model = load("smollm2-135m", dtype="float32").model
    cfg = model.config
    window = cfg.max_position_embeddings
    assert cfg.model_type == "llama"
    ids = torch.randint(100, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    original = _logits(model, ids)
    apply_rope_scaling(model, {"method": "yarn", "factor": 2.0})
    rotary = model.model.rotary_emb
    ref_cfg = type(cfg).from_dict(cfg.to_dict())
    ref_cfg.rope_parameters = {
        "rope_type": "yarn",
        "factor": 2.0,
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "original_max_position_embeddings": window,
    }
    ref_inv, ref_attn = ROPE_INIT_FUNCTIONS["yarn"](ref_cfg, None)
    assert torch.equal(rotary.inv_freq, ref_inv) and rotary.attention_scaling == ref_attn
    assert addressable_length(cfg, get_rope_spec(model)) == 2 * window
    assert cfg.max_position_embeddings == 2 * window  # the patched model announces its window
    assert not torch.equal(_logits(model, ids), original)
    revert_rope_scaling(model)
    assert torch.equal(_logits(model, ids), original)
    assert cfg.max_position_embeddings == window
