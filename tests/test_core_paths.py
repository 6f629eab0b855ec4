"""replace_folder: a finished folder swapped into place, the previous one kept until it is there."""

from __future__ import annotations

import errno
import os

import pytest

from longqa.core.paths import replace_folder


def _folder(path, text):
    path.mkdir()
    (path / "model.safetensors").write_text(text)
    return path


def test_replace_folder_new_and_existing_destination(tmp_path):
    dest = tmp_path / "out"
    replace_folder(_folder(tmp_path / ".out.partial", "one"), dest)
    assert (dest / "model.safetensors").read_text() == "one"
    replace_folder(_folder(tmp_path / ".out.partial", "two"), dest)
    assert (dest / "model.safetensors").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_a_failed_swap_puts_the_previous_folder_back(tmp_path, monkeypatch):
    dest = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / ".out.partial", "new")
    real_replace = os.replace

    def fail_on_new(src, dst, *args, **kwargs):
        if str(src) == str(new):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_new)
    with pytest.raises(OSError, match="No space left"):
        replace_folder(new, dest)
    assert (dest / "model.safetensors").read_text() == "old"
    assert not (tmp_path / ".out.previous").exists()
