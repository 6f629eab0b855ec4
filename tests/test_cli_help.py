"""Help a newcomer reads at 80 columns: whole flag names, plain types, an example per command,
``--version``; the console: library progress bars follow ``--no-progress``, the training header
names its processes and global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from longqa import __version__
from longqa.cli.app import app
from longqa.cli.examples import EXAMPLES

runner = CliRunner()


def _help(args: list[str], monkeypatch: pytest.MonkeyPatch, columns: int = 80) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _commands() -> list[str]:
    found: list[str] = []

    def walk(cmd, path: str) -> None:  # noqa: ANN001
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found.append(path)

    walk(get_command(app), "")
    return found


def test_passkey_help_at_80_columns_keeps_every_flag_whole(monkeypatch):
    text = _help(["eval", "passkey"], monkeypatch)
    assert max(len(line) for line in text.splitlines()) <= 80
    for flag in (
        "--rope-original-max-position-embeddings",
        "--rope-attention-factor",
        "--rope-max-position-embeddings",
        "--overwrite / --no-overwrite",
    ):
        assert flag in text, flag
    assert "…" not in text.replace("runs/eval/…", "")  # nothing cut short
    assert "<str>" not in text and "<int>" not in text
    assert "--rope-ntk-variant  hf|qwen" in text and "--trials  INTEGER" in text
    assert "Example: longqa eval passkey --model smollm2-135m" in text


def test_long_flag_names_are_whole_in_train_and_build_data(monkeypatch):
    assert "--pretrain-on-sft-text" in _help(["train"], monkeypatch)
    text = _help(["build-data"], monkeypatch)
    assert "<list[str]>" not in text and "TEXT …" in text  # a repeatable option


def test_wide_terminals_get_two_columns(monkeypatch):
    text = _help(["eval", "passkey"], monkeypatch, columns=140)
    line = next(ln for ln in text.splitlines() if "--rope-original-max-position-embeddings" in ln)
    assert "original (pretraining) window" in line  # the description beside the flag


def test_every_command_has_an_example(monkeypatch):
    commands = _commands()
    assert len(commands) >= 20
    missing = [c for c in commands if c not in EXAMPLES]
    assert not missing, f"add an example to longqa/cli/examples.py for: {missing}"
    for command in commands:
        assert EXAMPLES[command].startswith(f"longqa {command}")
    text = _help(["models", "prepare"], monkeypatch)
    assert "Example: longqa models prepare smollm2-135m" in text


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"longqa {__version__}"


def test_loading_weights_bar_follows_library_progress_bars(tmp_path: Path, capfd):
    from train_fixtures import tiny_model_dir
    from transformers import AutoModelForCausalLM

    from longqa.core.quiet import library_progress_bars

    path = tiny_model_dir(tmp_path)
    capfd.readouterr()
    try:
        library_progress_bars(False)
        AutoModelForCausalLM.from_pretrained(path)
        assert "Loading weights" not in capfd.readouterr().err
        library_progress_bars(True)
        AutoModelForCausalLM.from_pretrained(path)
        assert "Loading weights" in capfd.readouterr().err  # the check above can fail
    finally:
        library_progress_bars(True)


def test_run_header_names_processes_and_global_batch():
    from longqa.config.recipe import load_recipe
    from longqa.train.phases import describe_run

    recipe = load_recipe("smollm2-135m-yarn16k", ["train.micro_batch_size=2", "train.grad_accum=4"])
    one = describe_run(recipe)
    assert "on 1 process" in one and "2 per micro-batch × 4 accumulation = 8 rows" in one
    two = describe_run(recipe, world_size=2)
    assert "on 2 processes" in two and "× 2 processes = 16 rows per step" in two
    split = describe_run(recipe, world_size=4, sequence_split=2)
    assert "each sequence split over 2" in split and "= 16 rows per step" in split
