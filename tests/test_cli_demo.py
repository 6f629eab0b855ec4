"""`make demo`'s steps: each parses as a current `longqa` command; it ends comparing all three runs."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from longqa.cli.app import app
from longqa.cli.build_data import fit_to_task, given_options, validate_options
from longqa.cli.demo import demo_steps


def _parse(args: list[str]):
    """The leaf command and its parsed parameters, as `longqa ARGS` would see them (nothing runs)."""
    cmd, rest, name = typer.main.get_command(app), list(args), "longqa"
    while hasattr(cmd, "commands"):
        name = rest.pop(0)
        cmd = cmd.commands[name]
    return cmd.make_context(name, rest).params


def test_every_step_is_a_valid_command(tmp_path):
    steps = demo_steps(tmp_path / "demo", tmp_path / "corpus", trials=2, length=4096)
    assert len(steps) == 7
    for title, args in steps:
        params = _parse(args)
        if args[0] == "build-data":
            options = fit_to_task(args[2], given_options(params))
            assert validate_options(args[2], options).generator == "extractive", title


def test_the_demo_ends_comparing_all_three_passkey_runs(tmp_path):
    out = tmp_path / "demo"
    steps = demo_steps(out, tmp_path / "corpus")
    passkey_outs = [a[a.index("--out") + 1] for _, a in steps if a[:2] == ["eval", "passkey"]]
    assert len(passkey_outs) == 3
    title, last = steps[-1]
    assert last == ["eval", "compare", *passkey_outs] and "three" in title
    ropes = [a[a.index("--rope") + 1] if "--rope" in a else "adapter" for _, a in steps[1:]
             if a[:2] == ["eval", "passkey"]]  # fmt: skip
    assert ropes == ["none", "dynamic-yarn", "adapter"]


def test_compare_three_runs_table(tmp_path):
    import json

    runs = []
    for name, acc, rope in (("none", 0.0, "none"), ("yarn", 0.6, "dynamic-yarn"), ("ad", 0.8, "x")):
        d = tmp_path / name
        d.mkdir()
        summary = {"task": "passkey", "metric": "accuracy", "accuracy": acc, "rope": rope,
                   "by_length": {"12288": acc}}  # fmt: skip
        (d / "summary.json").write_text(json.dumps(summary))
        runs.append(str(d))
    result = CliRunner().invoke(app, ["eval", "compare", *runs], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "length 12288" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == ["length 12288", "0", "0.6", "0.8", "+0.6", "+0.8"]
    assert "dynamic-yarn" in result.output and "Δ ad" in result.output
    one = CliRunner().invoke(app, ["eval", "compare", runs[0]])
    assert "at least two run folders" in str(one.exception)


def test_readme_lists_the_demo_steps():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "the three passkey runs (no scaling, dynamic YaRN, the trained adapter)" in readme
