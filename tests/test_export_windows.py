"""Every RoPE method's export: plain transformers reloads it without a warning, with the window
ceil(factor × L0), and reproduces the frequencies the model was trained with."""

from __future__ import annotations

import logging
import shutil
import warnings

import pytest
import torch

from longqa.config.recipe import RopeConfig

L0 = 64
TRAINED = 192  # train.max_length of the adapter (dynamic methods export their scale there)

# spec, expected window
METHODS = {
    "linear": ({"method": "linear", "factor": 2.0}, 128),
    "ntk": ({"method": "ntk", "factor": 4.0}, 256),
    "yarn": ({"method": "yarn", "factor": 4.0}, 256),
    "yarn-from-target": ({"method": "yarn", "max_position_embeddings": 320}, 320),
    "llama3": ({"method": "llama3", "factor": 8.0}, 512),
    "abf": ({"method": "abf", "base": 500000.0, "max_position_embeddings": 256}, 256),
    "dynamic-yarn": ({"method": "dynamic-yarn", "margin": 64}, TRAINED + 64),
    "dynamic-yarn-with-target": (
        {"method": "dynamic-yarn", "margin": 64, "max_position_embeddings": 1024},
        TRAINED + 64,
    ),
    "dynamic-ntk": ({"method": "dynamic-ntk", "factor": 2.0}, TRAINED),
}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("export") / "base"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", list(METHODS))
def test_export_reloads_silently_with_the_window_and_trained_frequencies(
    tmp_path, base_folder, name
):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from longqa.models.export_hf import hf_rope_parameters, write_rope_config
    from longqa.ops.rope_scaling import compute_rope, is_dynamic

    spec, window = METHODS[name]
    spec = RopeConfig(**spec)
    folder = tmp_path / "out"
    shutil.copytree(base_folder, folder)
    params, new_window, _ = hf_rope_parameters(
        AutoConfig.from_pretrained(base_folder), spec, TRAINED
    )
    write_rope_config(folder / "config.json", params, new_window)

    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    old_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logging.Logger.warning_once.cache_clear()  # transformers' warn-once cache: report it again
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    finally:
        hf_logger.removeHandler(records)
        hf_logging.set_verbosity(old_level)
    assert records.messages == [] and [str(w.message) for w in caught] == []

    assert model.config.max_position_embeddings == window  # ceil(factor × L0)
    seq = TRAINED if is_dynamic(spec.method) else None
    want_inv, want_attn = compute_rope(
        spec.model_dump(), head_dim=16, base=10000.0, original_max_position_embeddings=L0,
        seq_len=seq,
    )  # fmt: skip
    rotary = model.model.rotary_emb
    torch.testing.assert_close(rotary.inv_freq.float(), want_inv, rtol=1e-5, atol=0)
    assert rotary.attention_scaling == pytest.approx(want_attn, rel=1e-6)
