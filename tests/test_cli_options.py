"""Flags generated from the schemas: the RoPE group in every command that takes a spec, build-data's
flags from the builders' Options, and the errors that name the right flag."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from data_builders.registry import available_builders, get_builder_module
from longqa.cli import eval as eval_cli
from longqa.cli.app import app
from longqa.cli.options import rope_flag
from longqa.config.recipe import RopeConfig
from longqa.core.errors import LongqaError

runner = CliRunner()
ROPE_COMMANDS = [
    ("eval", "passkey"),
    ("eval", "needle"),
    ("eval", "passage-retrieval"),
    ("eval", "perplexity"),
    ("eval", "ruler"),
    ("eval", "harness"),
    ("analyze", "effective-tokens"),
    ("analyze", "attention"),
    ("rope", "show"),
    ("generate",),
]


def _command(*path: str):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def _flags(cmd) -> dict:
    return {opt: p for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


def _all_commands(cmd, path: tuple[str, ...] = ()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _all_commands(sub, (*path, name))
    else:
        yield path, cmd


@pytest.mark.parametrize("path", ROPE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("field", list(RopeConfig.model_fields))
def test_every_rope_field_is_a_flag_of_every_rope_command(path, field):
    flags = _flags(_command(*path))
    assert rope_flag(field) in flags, f"{' '.join(path)} lacks {rope_flag(field)}"
    param = flags[rope_flag(field)]
    assert param.default is None  # unset = the model's / the adapter's RoPE
    if RopeConfig.model_fields[field].description:
        assert RopeConfig.model_fields[field].description in (param.help or "")


def test_the_rope_group_is_complete_wherever_it_appears():
    expected = {rope_flag(f) for f in RopeConfig.model_fields}
    found = []
    for path, cmd in _all_commands(typer.main.get_command(app)):
        flags = set(_flags(cmd))
        if flags & expected:
            assert expected <= flags, f"{' '.join(path)}: missing {sorted(expected - flags)}"
            found.append(path)
    assert sorted(found) == sorted(ROPE_COMMANDS)


def test_no_flag_has_two_meanings():
    """``--base`` is gone (the new RoPE base is --rope-base, the base model --model everywhere)."""
    for path, cmd in _all_commands(typer.main.get_command(app)):
        flags = _flags(cmd)
        assert "--base" not in flags, " ".join(path)
        assert "--factor" not in flags and "--method" not in flags, " ".join(path)
    assert "--model" in _flags(_command("export"))
    assert "--rope-theta" in _flags(_command("rope", "show"))


class _Loaded(Exception):
    pass


def test_llama3_freq_factors_reach_the_rope_config(monkeypatch):
    seen = {}

    def fake_load(model, adapter, rope, dtype):
        seen.update(model=model, rope=rope)
        raise _Loaded

    monkeypatch.setattr(eval_cli, "_load", fake_load)
    args = ["eval", "passkey", "--model", "m", "--rope", "llama3", "--rope-factor", "8",
            "--rope-low-freq-factor", "2", "--rope-high-freq-factor", "6",
            "--rope-original-max-position-embeddings", "8192"]  # fmt: skip
    result = runner.invoke(app, args)
    assert isinstance(result.exception, _Loaded), result.output
    assert seen["rope"] == RopeConfig(
        method="llama3",
        factor=8.0,
        low_freq_factor=2.0,
        high_freq_factor=6.0,
        original_max_position_embeddings=8192,
    )
    result = runner.invoke(app, ["eval", "passkey", "--model", "m"])
    assert isinstance(result.exception, _Loaded) and seen["rope"] is None


@pytest.mark.parametrize(
    "path",
    [("generate",), ("eval", "perplexity"), ("analyze", "attention"), ("eval", "passkey")],
    ids=" ".join,
)
def test_a_rope_value_without_a_method_is_an_error(path, tmp_path):
    extra = {"perplexity": ["--data", "x"], "attention": ["--data", "x"]}.get(path[-1], [])
    result = runner.invoke(app, [*path, *extra, "--rope-factor", "2"], input="hi")
    assert isinstance(result.exception, LongqaError), result.output
    assert str(result.exception) == "--rope-factor needs --rope METHOD (e.g. --rope yarn)"


def test_rope_help_shows_the_schema_descriptions_and_defaults():
    text = _help("eval", "needle")
    line = next(ln for ln in text.splitlines() if "--rope-low-freq-factor" in ln)
    assert "llama3: wavelengths above L0/this are divided by s (default 1.0)" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rope", "yarn", "--rope-factor", "0.5"], "--rope-factor must be >= 1 (got 0.5)"),
        (["--rope", "abf", "--rope-base", "0.5"], "--rope-base must be > 1 (got 0.5)"),
        (
            [
                "--rope",
                "llama3",
                "--rope-factor",
                "4",
                "--rope-low-freq-factor",
                "3",
                "--rope-high-freq-factor",
                "2",
            ],
            "llama3 rope: --rope-high-freq-factor (2.0) must exceed --rope-low-freq-factor (3.0)",
        ),  # fmt: skip
    ],
)
def test_bad_rope_values_are_one_line_errors_naming_the_flag(args, message):
    result = runner.invoke(app, ["eval", "passkey", "--model", "m", *args])
    assert isinstance(result.exception, LongqaError), result.output
    assert str(result.exception) == message


def test_invalid_rope_values_name_the_flag():
    result = runner.invoke(app, ["eval", "passkey", "--rope", "ntk"])
    assert "needs a factor (e.g. --rope-factor 4)" in str(result.exception)
    result = runner.invoke(app, ["eval", "passkey", "--rope", "yarn", "--rope-ntk-variant", "x"])
    assert result.exit_code == 2 and "--rope-ntk-variant" in result.output


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def test_build_data_help_lists_every_task():
    from data_builders.registry import summarize_builder

    text = _help("build-data")
    assert "--task  CHOICE *" in text  # the tasks are listed above the options
    for task in available_builders():
        summary = summarize_builder(task)
        assert len(summary) > 20 and "--task" not in summary
        assert f"{task}: {summary}" in text
    result = runner.invoke(app, ["build-data", "--task", "nope"])
    assert result.exit_code == 2 and "passage-retrieval" in result.output


def test_every_builder_option_is_a_flag():
    flags = _flags(_command("build-data"))
    for task in available_builders():
        for field in get_builder_module(task).Options.model_fields:
            flag = "--" + field.replace("_", "-")
            assert flag in flags, f"{task}: {flag}"
            assert flags[flag].default is None  # unset = the builder's own default


def test_builder_option_help_shows_its_default():
    lines = _help("build-data").splitlines()
    line = next(ln for ln in lines if "--num-paragraphs" in ln)
    assert "paragraphs per sample (LongBench: 30) (default 30)" in line
    line = next(ln for ln in lines if "--target-tokens" in ln)
    assert "paraphrase-mdqa: default 8192" in line and ": default 32768" in line


def test_builder_flags_are_checked_against_the_task(tmp_path):
    args = ["build-data", "--task", "paraphrase-mdqa", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--corpus", "a", "--corpus", "b"])
    assert isinstance(result.exception, LongqaError)
    assert "`--corpus` takes one value for task paraphrase-mdqa" in str(result.exception)
    result = runner.invoke(app, [*args, "--corpus", "a", "--num-paragraphs", "3"])
    assert "`--num-paragraphs` is not an option of task paraphrase-mdqa" in str(result.exception)
    result = runner.invoke(app, ["build-data", "--task", "mix", *args[3:], "--inputs", "a",
                                 "--counts", "1,2"])  # fmt: skip
    assert str(result.exception) == "task mix: --counts has 2 values for 1 inputs"
