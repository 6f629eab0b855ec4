"""Shipped recipes validate and carry their papers' numbers; dotted overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longqa.config.recipe import (
    apply_overrides,
    dump_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    recipes_dir,
    resolve_recipe_path,
)
from longqa.core.errors import LongqaError

SHIPPED = sorted(p.stem for p in recipes_dir().glob("*.yaml"))


FOUNDATION = ["llama2-7b-abf32k", "llama3-8b-abf128k", "qwen14b-yarn32k", "smollm2-135m-yarn16k"]


def test_the_four_foundation_recipes_ship() -> None:
    assert list_recipes() == FOUNDATION
    for name in FOUNDATION:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert resolve_recipe_path(name) == recipes_dir() / f"{name}.yaml"
    methods = {name: load_recipe(name).rope.method for name in FOUNDATION}
    assert methods == {
        "llama2-7b-abf32k": "abf",
        "llama3-8b-abf128k": "abf",
        "qwen14b-yarn32k": "dynamic-yarn",
        "smollm2-135m-yarn16k": "yarn",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_and_is_sane(name: str) -> None:
    path = recipes_dir() / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "each recipe starts with a comment on where its numbers come from"
    recipe = load_recipe(name)
    assert recipe.name == name == path.stem
    assert recipe.description
    assert recipe.train.phases, "a recipe trains at least one phase"
    for phase in recipe.train.phases:
        assert phase.datasets, f"phase {phase.name} has no datasets"
        assert not any(Path(d.path).is_absolute() for d in phase.datasets), "repo-relative data"
    rope = recipe.rope
    if rope.max_position_embeddings and rope.original_max_position_embeddings:
        assert rope.max_position_embeddings > rope.original_max_position_embeddings
        if rope.factor is not None:
            assert (
                rope.factor == rope.max_position_embeddings / rope.original_max_position_embeddings
            )
    assert recipe.train.max_length <= (rope.max_position_embeddings or recipe.train.max_length)
    # the resolved dump is itself a valid recipe with identical values
    again = recipe_from_dict(yaml.safe_load(dump_recipe(recipe)), "dump")
    assert again == recipe


def test_qwen14b_is_the_paper_setup() -> None:
    r = load_recipe("qwen14b-yarn32k")
    assert r.model.name == "Qwen/Qwen-14B-Chat" and r.model.layout == "original-qwen"
    assert r.model.quantization == "nf4"
    assert r.rope.method == "dynamic-yarn"
    # L0 comes from the checkpoint (original Qwen's seq_length), not from the recipe
    assert r.rope.original_max_position_embeddings is None
    assert r.rope.max_position_embeddings == 32768
    assert (r.lora.r, r.lora.alpha, r.lora.dropout) == (16, 64, 0.1)
    assert r.lora.target_modules == "all-linear" and r.lora.trainable_norms
    assert r.train.lr == 5e-5 and r.train.schedule == "linear" and r.train.warmup_ratio == 0.01
    assert r.train.effective_batch == 64 and r.train.max_length == 32768
    kinds = [(p.kind, p.steps) for p in r.train.phases]
    assert kinds[0] == ("pretrain", 100) and kinds[1][0] == "sft" and len(kinds) == 2
    assert r.kernels.rope and r.kernels.chunked_ce and r.memory.offload_activations


def test_abf_recipes_use_the_published_bases() -> None:
    l3 = load_recipe("llama3-8b-abf128k")
    assert l3.rope.method == "abf" and l3.rope.base == 150e6
    assert l3.rope.max_position_embeddings == 131072 == l3.train.max_length
    l2 = load_recipe("llama2-7b-abf32k")
    assert l2.rope.method == "abf" and l2.rope.base == 500e3
    assert (l2.rope.original_max_position_embeddings, l2.rope.max_position_embeddings) == (
        4096,
        32768,
    )


def test_smollm2_demo_is_cpu_sized() -> None:
    r = load_recipe("smollm2-135m-yarn16k")
    assert r.model.name == "smollm2-135m" and r.model.dtype == "float32"
    assert r.rope.method == "yarn" and r.rope.factor == 2.0
    assert r.rope.original_max_position_embeddings == 8192
    assert r.train.max_length <= 2048 and r.train.effective_batch <= 4
    assert not r.kernels.rope and not r.memory.offload_activations


def test_overrides_are_applied_and_typed() -> None:
    r = load_recipe(
        "smollm2-135m-yarn16k",
        ["train.lr=1e-4", "train.phases.0.steps=5", "data.packing=true", "rope.factor=3"],
    )
    assert r.train.lr == pytest.approx(1e-4) and isinstance(r.train.lr, float)
    assert r.train.phases[0].steps == 5
    assert r.data.packing is True
    assert r.rope.factor == 3.0
    # the original file is untouched by overrides
    assert load_recipe("smollm2-135m-yarn16k").train.phases[0].steps == 10


def test_apply_overrides_returns_a_copy() -> None:
    tree = {"train": {"phases": [{"steps": 1}]}}
    out = apply_overrides(tree, ["train.phases.0.steps=7", "new.section.key=x"])
    assert out == {"train": {"phases": [{"steps": 7}]}, "new": {"section": {"key": "x"}}}
    assert tree == {"train": {"phases": [{"steps": 1}]}}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.lr=abc", "'train.lr': Input should be a valid number"),
        ("train.bogus=1", "'train.bogus': unknown key"),
        ("data.max_length=512", "'data.max_length': unknown key (did you mean train.max_length?)"),
        ("train.lrr=1e-4", "unknown key (did you mean train.lr?)"),
        ("train.phases.0.stepz=5", "unknown key (did you mean train.phases.0.steps?)"),
        ("kernels.tiled_mpl=true", "unknown key (did you mean kernels.tiled_mlp?)"),
        ("train.grad_accum=1.5", "'train.grad_accum'"),
        ("train.phases.7.steps=5", "'train.phases.7' is not a valid list index"),
        ("train.phases.x.steps=5", "'train.phases.x' is not a valid list index"),
        ("model.name.x=1", "'model.name' is a value, not a section"),
        ("rope.factor=0.5", "factor must be >= 1"),
        ("rope.method=warp", "unknown rope method 'warp'"),
        ("train.lr", "expected key=value"),
        ("train..lr=1", "empty key"),
        ("train.lr=[1", "cannot parse value"),
    ],
)
def test_bad_overrides_name_key_and_file(override: str, fragment: str) -> None:
    with pytest.raises(LongqaError) as err:
        load_recipe("smollm2-135m-yarn16k", [override])
    msg = str(err.value)
    assert fragment in msg
    assert "smollm2-135m-yarn16k.yaml" in msg
    assert "\n" not in msg


def test_unknown_recipe_lists_available() -> None:
    with pytest.raises(LongqaError) as err:
        load_recipe("no-such-recipe")
    for name in SHIPPED:
        assert name in str(err.value)


def test_recipe_file_errors_name_the_file(tmp_path: Path) -> None:
    good = yaml.safe_load((recipes_dir() / "smollm2-135m-yarn16k.yaml").read_text())
    bad = dict(good, lora=dict(good["lora"], rank=8))
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(LongqaError, match=r"mine\.yaml.*'lora\.rank': unknown key"):
        load_recipe(str(path))
    bad = dict(good, train=dict(good["train"], micro_batch_size="two"))
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(LongqaError, match=r"mine\.yaml.*'train\.micro_batch_size'"):
        load_recipe(str(path))
    path.write_text("model: [unclosed\n")
    with pytest.raises(LongqaError, match=r"mine\.yaml: invalid YAML"):
        load_recipe(str(path))
    with pytest.raises(LongqaError, match="recipe file not found"):
        load_recipe(str(tmp_path / "absent.yaml"))
    # a copy of a shipped recipe loads by path, its name defaulting to the file stem
    del good["name"]
    path.write_text(yaml.safe_dump(good))
    assert load_recipe(str(path)).name == "mine"


def test_earlier_chunked_ce_key_name_still_reads() -> None:
    """Adapter bundles saved before the rename hold ``kernels.fused_ce``; it means chunked_ce."""
    from longqa.config.recipe import KernelsConfig

    assert KernelsConfig.model_validate({"fused_ce": False}).chunked_ce is False
    recipe = load_recipe("qwen14b-yarn32k", ["kernels.fused_ce=false"])  # set last: it wins
    assert recipe.kernels.chunked_ce is False and "fused_ce" not in recipe.kernels.model_dump()


def test_an_unknown_key_far_from_every_key_gets_no_suggestion() -> None:
    with pytest.raises(LongqaError) as err:
        load_recipe("smollm2-135m-yarn16k", ["zebra.stripes=3"])
    assert str(err.value).endswith("'zebra': unknown key")


def test_set_suggestion_on_the_command_line() -> None:
    from typer.testing import CliRunner

    from longqa.cli.app import app

    result = CliRunner().invoke(
        app, ["recipes", "show", "smollm2-135m-yarn16k", "--set", "data.max_length=512"]
    )
    assert "did you mean train.max_length?" in str(result.exception)
