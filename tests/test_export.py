"""Export: merged models reload with plain transformers (no longqa patch) and reproduce the patched
training-time logits; adapter-only export; config keys engines read; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longqa.config.recipe import ModelConfig, Recipe, RopeConfig, TrainConfig
from longqa.core.errors import LongqaError

L0 = 64  # tiny model's pretraining window


def tiny_tokenizer():
    """Byte-level tokenizer (256 byte tokens + ChatML specials) with a chat template."""
    from train_fixtures import byte_tokenizer

    return byte_tokenizer(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    from tiny import tiny_llama_config
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab_size=264, max_position_embeddings=L0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def make_bundle(tmp: Path, rope: dict | None, max_length: int, base: Path | None = None) -> Path:
    """A tiny Llama + a LoRA adapter with nonzero weights, saved as a longqa adapter bundle."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from longqa.models.adapters import save_adapter_bundle
    from longqa.models.load import peft_wrapping

    base = base or make_tiny_llama(tmp / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0
    )
    with peft_wrapping():  # peft probes a deprecated transformers name
        peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(name=str(base), dtype="float32", quantization="none"),
        rope=RopeConfig(**(rope or {})),
        train=TrainConfig(max_length=max_length),
    )
    return save_adapter_bundle(peft_model, tiny_tokenizer(), recipe, tmp / "adapter")


CASES = {
    # name: (rope spec, trained max_length, eval length inside the trained window)
    "yarn": ({"method": "yarn", "factor": 4.0}, 256, 200),
    "linear": ({"method": "linear", "factor": 2.0}, 128, 120),
    "llama3": ({"method": "llama3", "factor": 4.0, "low_freq_factor": 1.0}, 256, 180),
    "abf": ({"method": "abf", "base": 500000.0, "max_position_embeddings": 256}, 256, 150),
    "dynamic-yarn": ({"method": "dynamic-yarn", "margin": 64}, 192, 192),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_export_matches_patched_training_model(tmp_path, case):
    from transformers import AutoModelForCausalLM

    from longqa.models.export_hf import export_adapter
    from longqa.models.load import load
    from longqa.patch.rope import LongqaRotaryEmbedding, revert_rope_scaling

    rope, max_length, length = CASES[case]
    adapter = make_bundle(tmp_path, rope, max_length)
    trained, _, spec = load(adapter=adapter, dtype="float32")
    assert spec is not None and spec.method == rope["method"]
    summary = export_adapter(adapter, tmp_path / "out", merge=True, dtype="float32")
    assert (summary["warnings"] != []) == (case == "dynamic-yarn")

    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    params = cfg["rope_parameters"]
    if case in ("yarn", "linear", "llama3", "dynamic-yarn"):
        assert params.get("original_max_position_embeddings") == (None if case == "linear" else L0)
        assert cfg["rope_scaling"]["rope_type"] == params["rope_type"]
        assert cfg["rope_scaling"]["factor"] == params["factor"]
    if case == "dynamic-yarn":
        assert params["rope_type"] == "yarn" and params["factor"] == (192 + 64) / L0
    if case == "abf":
        assert params == {"rope_type": "default", "rope_theta": 500000.0}
        assert cfg["rope_scaling"] is None and cfg["rope_theta"] == 500000.0
    assert cfg["max_position_embeddings"] >= max_length
    factor = (192 + 64) / L0 if case == "dynamic-yarn" else rope.get("factor", 256 / L0)
    assert cfg["max_position_embeddings"] == factor * L0  # the window the factor addresses

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert not any(isinstance(m, LongqaRotaryEmbedding) for m in plain.modules())
    assert not any("lora" in n for n, _ in plain.named_parameters())
    ids = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = trained(ids).logits
        got = plain(ids).logits
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
        # the RoPE config is what makes them agree: native RoPE gives different logits
        native = revert_rope_scaling(trained)(ids).logits
    assert (native - want).abs().max() > 1e-3


def test_dynamic_yarn_differs_below_trained_length(tmp_path):
    """The warning is real: at a short prompt, training-time dynamic yarn used a smaller scale."""
    from transformers import AutoModelForCausalLM

    from longqa.models.export_hf import export_adapter
    from longqa.models.load import load

    adapter = make_bundle(tmp_path, CASES["dynamic-yarn"][0], 192)
    trained, _, _ = load(adapter=adapter, dtype="float32")
    export_adapter(adapter, tmp_path / "out", merge=True, dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (plain(ids).logits - trained(ids).logits).abs().max() > 1e-4


def test_adapter_only_export_and_bf16_default(tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from longqa.models.export_hf import export_adapter
    from longqa.models.load import peft_wrapping

    adapter = make_bundle(tmp_path, {"method": "yarn", "factor": 4.0}, 256)
    export_adapter(adapter, tmp_path / "keep", merge=False)
    keep = tmp_path / "keep"
    assert (keep / "adapter_model.safetensors").is_file()
    cfg = AutoConfig.from_pretrained(keep / "base_model_config")
    assert cfg.rope_parameters["rope_type"] == "yarn"
    assert cfg.rope_parameters["original_max_position_embeddings"] == L0
    overrides = json.loads((keep / "rope_overrides.json").read_text())
    assert overrides["rope_parameters"]["factor"] == 4.0
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with peft_wrapping():
        PeftModel.from_pretrained(base, keep)  # the copied adapter still loads

    export_adapter(adapter, tmp_path / "bf16", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert merged.dtype == torch.bfloat16
    info = json.loads((tmp_path / "bf16" / "longqa_export.json").read_text())
    assert info["merged"] and info["rope_parameters"]["factor"] == 4.0


def test_bad_input(tmp_path):
    from longqa.models.export_hf import export_adapter
    from longqa.models.load import check_supported_checkpoint

    adapter = make_bundle(tmp_path, {"method": "yarn", "factor": 4.0}, 256)
    other = make_tiny_llama(tmp_path / "other", seed=1)
    with pytest.raises(LongqaError, match="does not match the adapter's base model"):
        export_adapter(adapter, tmp_path / "x", merge=True, base=str(other))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(LongqaError, match=r"model_type 'gpt2' is not supported; supported: Llama"):
        check_supported_checkpoint(str(gpt2))
    with pytest.raises(LongqaError, match="not a longqa adapter"):
        export_adapter(tmp_path / "base", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_export(tmp_path):
    from typer.testing import CliRunner

    from longqa.cli.app import app

    adapter = make_bundle(tmp_path, {"method": "linear", "factor": 2.0}, 128)
    out = tmp_path / "cli-out"
    res = CliRunner().invoke(
        app, ["export", "--adapter", str(adapter), "--out", str(out), "--merge"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["factor"] == 2.0
    assert "linear" in res.output and str(out) in res.output


@pytest.mark.slow
def test_from_nf4_merges_into_dequantised_weights(tmp_path):
    """--from-nf4: merged W = dequant(NF4(W)) + (alpha/r)·B·A, the weights QLoRA trained against."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    from safetensors.torch import load_file

    from longqa.models.export_hf import export_adapter

    adapter = make_bundle(tmp_path, {"method": "yarn", "factor": 4.0}, 256)
    export_adapter(adapter, tmp_path / "nf4", merge=True, dtype="float32", from_nf4=True)
    merged = load_file(tmp_path / "nf4" / "model.safetensors")
    base = load_file(tmp_path / "base" / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    name = "model.layers.1.self_attn.q_proj"
    w = base[f"{name}.weight"]
    packed, state = bnb_f.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    deq = bnb_f.dequantize_4bit(packed, state).float()
    a = lora[f"base_model.model.{name}.lora_A.weight"]
    b = lora[f"base_model.model.{name}.lora_B.weight"]
    want = deq + (16 / 4) * b @ a
    torch.testing.assert_close(merged[f"{name}.weight"], want, atol=1e-5, rtol=1e-5)
    assert (merged[f"{name}.weight"] - (w + 4 * b @ a)).abs().max() > 1e-4  # not the fp weights


def test_merged_export_files_keep_the_umask_mode(tmp_path):
    """Under umask 022 every exported file is 644 (a server running as another user can read it)
    and config.json carries no GGUF loader leftovers."""
    import os
    import stat

    from longqa.core.paths import atomic_write_text
    from longqa.models.export_hf import export_adapter

    adapter = make_bundle(tmp_path, {"method": "linear", "factor": 2.0}, 128)
    cfg_file = tmp_path / "base" / "config.json"  # as a GGUF-converted base writes it
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "_model_name_or_path": "Smollm2 135M"}))
    old = os.umask(0o022)
    try:
        export_adapter(adapter, tmp_path / "merged", merge=True)
        written = atomic_write_text(tmp_path / "plain.txt", "x")
        os.umask(0o077)
        private = atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    out = tmp_path / "merged"
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    for name in ("config.json", "model.safetensors", "longqa_export.json"):
        assert modes[name] == 0o644, (name, oct(modes[name]))
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert "_model_name_or_path" not in json.loads((out / "config.json").read_text())
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((adapter / "adapter_model.safetensors").stat().st_mode) == 0o644
