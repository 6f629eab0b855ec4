"""Memory planner: its terms follow the formulas, grow with length, and decide fit."""

from __future__ import annotations

import pytest

from longqa.config.recipe import load_recipe
from longqa.plan.memory import (
    GB,
    KNOWN_SHAPES,
    ModelShape,
    estimate_bytes,
    loss_bytes,
    plan_memory,
)


def _qwen():
    return load_recipe("qwen14b-yarn32k")


def test_terms_match_formulas():
    r = _qwen()
    shape = ModelShape(**KNOWN_SHAPES["qwen-14b"])
    items = estimate_bytes(r, shape, 32768)
    h, v, layers = 5120, 152064, 40
    # chunked loss: two fp32 [chunk, V] blocks; the final norm's fp32 input and normalised values,
    # the scored hidden states and their gradient (fp32: the QLoRA residual stream)
    assert loss_bytes(r, shape, 32768) == 2 * 4096 * v * 4 + 32768 * h * (4 + 4 + 4 + 4)
    assert items["loss, beyond the layer peak"] == 0  # freed before the last layer's recompute
    # offloading on: only two layer inputs stay on the GPU, fp32 (prepare_model_for_kbit_training)
    assert items["checkpointed activations"] == 2 * 32768 * h * 4
    lin = layers * (4 * h * h + 3 * h * 13696)
    assert items["4-bit weights"] == pytest.approx(lin * (0.5 + 1 / 64 + 4 / (64 * 256)))
    no_off = load_recipe("qwen14b-yarn32k", ["memory.offload_activations=false"])
    assert (
        estimate_bytes(no_off, shape, 32768)["checkpointed activations"] == layers * 32768 * h * 4
    )
    full = load_recipe("qwen14b-yarn32k", ["kernels.chunked_ce=false"])
    full_items = estimate_bytes(full, shape, 32768)
    assert loss_bytes(full, shape, 32768) == 32768 * v * (2 + 4 + 4) + 32768 * h * 16
    layer_peak = full_items["layer recompute"] + full_items["MLP recompute"]
    assert full_items["loss, beyond the layer peak"] == loss_bytes(full, shape, 32768) - layer_peak


def test_plan_fits_decision_and_growth():
    r = _qwen()
    p80 = plan_memory(r, gpu_mem_gb=80)
    assert p80.seq_len == 32768 and p80.fits and p80.max_fit_len > 32768
    p16 = plan_memory(r, gpu_mem_gb=16)
    assert not p16.fits and (p16.max_fit_len or 0) < 32768
    longer = plan_memory(r, gpu_mem_gb=80, seq_len=131072)
    assert longer.total_gb > p80.total_gb
    full = plan_memory(load_recipe("qwen14b-yarn32k", ["kernels.chunked_ce=false"]), 80)
    assert full.items["loss, beyond the layer peak"] > 8 > p80.items["loss, beyond the layer peak"]
    assert abs(sum(p80.items.values()) - p80.total_gb) < 1e-9 and p80.total_gb * GB > 0


def test_corrupt_model_config_is_named_not_hidden(tmp_path):
    from longqa.core.errors import LongqaError

    folder = tmp_path / "qwen-14b-broken"  # a name that would also match a built-in shape
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    recipe = load_recipe("qwen14b-yarn32k", [f"model.name={folder}", "model.layout=hf"])
    with pytest.raises(LongqaError, match=r"qwen-14b-broken/config.json: cannot read the model"):
        plan_memory(recipe, 80)
