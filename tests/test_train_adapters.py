"""Adapter bundles: files written and re-read, RoPE spec re-applied, base mismatch rejected."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import tiny_model_dir, tiny_recipe, write_jsonl

from longqa.core.errors import LongqaError
from longqa.models.adapters import (
    is_adapter_dir,
    read_adapter_info,
    save_adapter_bundle,
)
from longqa.models.load import load


def _bundle(tmp_path, rope=None):
    from longqa.config.recipe import RopeConfig
    from longqa.train.model import build_trainable_model, runtime_for

    model_dir = tiny_model_dir(tmp_path)
    recipe = tiny_recipe(model_dir, write_jsonl(tmp_path / "d.jsonl", []), tmp_path / "o")
    if rope:
        recipe = recipe.model_copy(update={"rope": RopeConfig(**rope)})
    model, _ = build_trainable_model(recipe, runtime_for(recipe, "cpu"))
    for n, p in model.named_parameters():
        if "lora_B" in n or "modules_to_save" in n:
            torch.nn.init.normal_(p, mean=1.0 if "norm" in n else 0.0, std=0.05)
    from transformers import AutoTokenizer

    out = save_adapter_bundle(
        model, AutoTokenizer.from_pretrained(model_dir), recipe, tmp_path / "a", phase="sft"
    )
    return model.eval(), recipe, out, model_dir


def test_bundle_round_trip_reproduces_outputs(tmp_path):
    model, recipe, out, model_dir = _bundle(tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "rope_spec.json",
            "longqa.json", "tokenizer.json"} <= names  # fmt: skip
    info = read_adapter_info(out)
    assert info["base_model"] == str(model_dir) and info["max_length"] == 64
    assert (
        info["phase"] == "sft"
        and "name: tiny" in info["recipe"]
        and info["rope"]["method"] == "none"
    )
    loaded, tok, rope = load(adapter=out)
    assert rope is None and tok("the cat")["input_ids"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_rope_spec_is_reapplied_on_load(tmp_path):
    from longqa.patch.rope import get_rope_spec

    spec = {"method": "linear", "factor": 4.0, "original_max_position_embeddings": 512}
    model, recipe, out, _ = _bundle(tmp_path, rope=spec)
    assert json.loads((out / "rope_spec.json").read_text())["factor"] == 4.0
    loaded, _, rope = load(adapter=out)
    assert rope is not None and rope.method == "linear" and rope.factor == 4.0
    assert get_rope_spec(loaded.get_base_model()).factor == 4.0
    ids = torch.arange(5, 45)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_bad_adapter_dirs(tmp_path):
    _, _, out, _ = _bundle(tmp_path)
    with pytest.raises(LongqaError, match="does not match the adapter's base model"):
        load(adapter=out, model=str(tmp_path / "other-model"))
    (tmp_path / "empty").mkdir()
    assert not is_adapter_dir(tmp_path / "empty") and is_adapter_dir(out)
    with pytest.raises(LongqaError, match="not a longqa adapter"):
        read_adapter_info(tmp_path / "empty")
    with pytest.raises(LongqaError, match="adapter folder not found"):
        read_adapter_info(tmp_path / "nope")
