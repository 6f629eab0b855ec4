"""`longqa rope show` / `rope methods`: table and JSON contents, one-line errors with exit status 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longqa.cli.app import app
from longqa.core.errors import LongqaError
from longqa.ops.rope_scaling import compute_rope

runner = CliRunner()
WINDOW = ["--rope-original-max-position-embeddings", "2048"]
SHOW = ["rope", "show", *WINDOW, "--rope-theta", "10000", "--head-dim", "16"]


def test_json_matches_library():
    result = runner.invoke(app, [*SHOW, "--rope", "yarn", "--rope-factor", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    inv, attn = compute_rope(
        {"method": "yarn", "factor": 4.0},
        head_dim=16,
        base=10000.0,
        original_max_position_embeddings=2048,
    )
    assert data["method"] == "yarn"
    assert data["inv_freq"] == inv.tolist() and len(data["inv_freq"]) == 8
    assert data["attention_factor"] == pytest.approx(0.1 * math.log(4) + 1)
    assert data["attention_factor"] == attn
    assert data["scale"][0] == pytest.approx(1.0) and data["scale"][-1] == pytest.approx(4.0)


def test_table_lists_pairs_and_attention_factor():
    result = runner.invoke(app, [*SHOW, "--rope", "linear", "--rope-factor", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "wavelength before" in out and "scale applied" in out
    assert "attention factor: 1.000000" in out
    for i in range(8):
        assert f"│ {i:>4} │" in out
    assert out.count("2.0000") == 8  # linear: every pair scaled by s


def test_dynamic_uses_seq_len():
    args = [*SHOW, "--rope", "dynamic-yarn", "--seq-len", "6000", "--rope-margin", "0", "--json"]
    data = json.loads(runner.invoke(app, args).stdout)
    assert data["seq_len"] == 6000
    assert data["attention_factor"] == pytest.approx(0.1 * math.log(6000 / 2048) + 1)
    default = json.loads(
        runner.invoke(app, [*SHOW, "--rope", "dynamic-ntk", "--rope-factor", "2", "--json"]).stdout
    )
    assert default["seq_len"] == 4096  # factor × original window when --seq-len is absent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rope", "foo"], "unknown rope method 'foo'; available: none, linear"),
        (["--rope", "yarn", "--rope-factor", "0.5"], "factor must be >= 1"),
        (["--rope", "yarn"], "needs a factor"),
        (["--rope", "abf"], "needs a new base (e.g. --rope-base 500000)"),
        (
            ["--rope-factor", "2"],
            "--rope-factor, --rope-original-max-position-embeddings need --rope",
        ),
    ],
)
def test_bad_input_raises_longqa_error(args, message):
    result = runner.invoke(app, [*SHOW, *args])
    assert isinstance(result.exception, LongqaError)
    assert message in str(result.exception)


def test_show_without_a_method_says_which_flag():
    result = runner.invoke(app, ["rope", "show", "--head-dim", "16"])
    assert isinstance(result.exception, LongqaError)
    assert "rope show needs --rope METHOD" in str(result.exception)


def test_console_script_exit_code_and_one_line():
    exe = Path(sys.executable).parent / "longqa"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "longqa"]
    proc = subprocess.run(
        [*cmd, "rope", "show", "--rope", "bogus"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown rope method 'bogus'")


def test_methods_lists_the_registry():
    from longqa.ops.rope_scaling import available_methods

    result = runner.invoke(app, ["rope", "methods"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == available_methods()
