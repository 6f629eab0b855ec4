"""`longqa export` on a full disk: one line naming the output, the previous export untouched."""

from __future__ import annotations

import errno
import os

from test_export import make_bundle
from typer.testing import CliRunner

from longqa.core.faults import WriteFailed


def test_full_disk_during_an_export_names_the_folder_and_keeps_the_previous_export(
    tmp_path, monkeypatch
):
    from longqa.cli.app import app

    adapter = make_bundle(tmp_path, None, 128)
    out = tmp_path / "exported"
    argv = ["export", "--adapter", str(adapter), "--out", str(out), "--merge", "--dtype", "float32"]
    runner = CliRunner()
    assert runner.invoke(app, argv).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def full_disk(src, dst, *a, **kw):
        if ".exported.partial" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full_disk)
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, WriteFailed)
    assert str(result.exception) == (
        f"cannot write {out}: No space left on device (the previous complete state is untouched)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / ".exported.partial").exists()
    assert not list(tmp_path.glob(".exported.longqa.lock*"))  # the lock was released
