"""The lock file and `longqa doctor`'s installed-versus-locked comparison."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longqa.cli import doctor as doctor_mod
from longqa.cli.app import app
from longqa.core import versions
from longqa.core.errors import LongqaError


def test_the_committed_lock_pins_what_the_makefile_installs():
    lock = versions.read_lock(versions.default_lock_path())
    torch_in = (Path(__file__).resolve().parents[1] / "requirements" / "torch.in").read_text()
    assert f"torch=={lock['torch']}" in torch_in.splitlines()  # one torch release everywhere
    for dist in ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "kernels"):
        assert dist in lock, dist
    assert "+" not in lock["torch"]  # no build tag: the pin matches CPU and CUDA builds


def test_read_lock_names_the_bad_line(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\nFoo_Bar==1.2\n    # via x\n--extra-index-url u\nbaz>=2\n")
    with pytest.raises(LongqaError, match=r"lock.txt:5: expected 'name==version', got 'baz>=2'"):
        versions.read_lock(lock)
    lock.write_text("Foo_Bar==1.2\nzstandard==0.23.0 ; python_version >= '3'\n")
    assert versions.read_lock(lock) == {"foo-bar": "1.2", "zstandard": "0.23.0"}


@pytest.mark.parametrize(
    ("installed", "locked", "same"),
    [("2.13.0+cpu", "2.13.0", True), ("2.13.0", "2.13.0", True), ("2.13.1", "2.13.0", False),
     ("2.13.0+cpu", "2.13.0+cu128", False), ("5.25.0", "5.25", True)],
)  # fmt: skip
def test_same_release_follows_pep_440(installed, locked, same):
    assert versions.same_release(installed, locked) is same


def test_differences_and_the_doctor_row(tmp_path, monkeypatch):
    have = importlib.metadata.version("transformers")
    lock = tmp_path / "cpu-lock.txt"
    lock.write_text(f"transformers=={have}\npeft==0.0.1\nno-such-dist-xyz==1.0\n")
    diffs = versions.lock_differences(lock)
    assert [str(d) for d in diffs] == [f"peft {importlib.metadata.version('peft')} (locked 0.0.1)"]
    missing = versions.lock_differences(lock, only_installed=False)
    assert "no-such-dist-xyz not installed (locked 1.0)" in [str(d) for d in missing]

    monkeypatch.setattr(versions, "default_lock_path", lambda: lock)
    (row,) = doctor_mod._lock()
    assert row.status == "warn" and row.detail.startswith("1 differ from cpu-lock.txt: peft ")
    result = CliRunner().invoke(app, ["doctor", "--lock-only"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"1 installed package(s) differ from {lock}"
    monkeypatch.setattr(versions, "default_lock_path", lambda: tmp_path / "absent.txt")
    assert doctor_mod._lock()[0].status == "info"
