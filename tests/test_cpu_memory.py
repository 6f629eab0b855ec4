"""CPU training memory: the huge-pages restart of the ``longqa`` command and its guards; the
``memory.cpu_return_freed`` switch of the runtime."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from longqa.train import cpu_memory
from longqa.train.cpu_memory import (
    HUGE_PAGES_TUNABLE,
    huge_pages_active,
    huge_pages_supported,
    is_longqa_command,
    restart_with_huge_pages,
    with_huge_pages,
)


def test_with_huge_pages_appends_once_and_keeps_other_tunables():
    env = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/x"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"
    assert env["HOME"] == "/x"
    assert with_huge_pages(env) == env  # already there: unchanged
    assert with_huge_pages({})["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE
    assert huge_pages_active(env) and not huge_pages_active({"GLIBC_TUNABLES": "x=1"})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("always [madvise] never", True),
        ("[always] madvise never", True),
        ("always madvise [never]", False),
    ],
)
def test_huge_pages_need_transparent_huge_pages(tmp_path, monkeypatch, mode, expected):
    monkeypatch.setattr(cpu_memory, "glibc_version", lambda: (2, 36))
    f = tmp_path / "enabled"
    f.write_text(mode + "\n")
    assert huge_pages_supported(f) is expected
    monkeypatch.setattr(cpu_memory, "glibc_version", lambda: (2, 31))  # tunable added in 2.35
    assert huge_pages_supported(f) is False
    assert huge_pages_supported(tmp_path / "missing") is False


def test_only_the_longqa_command_restarts():
    assert is_longqa_command("/venv/bin/longqa")
    assert is_longqa_command("/repo/longqa/__main__.py")
    assert not is_longqa_command("/venv/bin/pytest")
    assert not is_longqa_command("/venv/lib/site-packages/pytest/__main__.py")
    assert not is_longqa_command("")


def test_restart_reexecutes_the_same_command_with_the_tunable(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(cpu_memory, "huge_pages_supported", lambda: True)
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "longqa", "train", "--recipe", "r"])
    monkeypatch.setattr(sys, "argv", ["/repo/longqa/__main__.py", "train", "--recipe", "r"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    said = []
    restart_with_huge_pages(said.append)
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == [
        sys.executable,
        "-m",
        "longqa",
        "train",
        "--recipe",
        "r",
    ]
    assert env["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE and "restarting" in said[0]
    calls.clear()
    monkeypatch.setenv("GLIBC_TUNABLES", HUGE_PAGES_TUNABLE)  # the restarted process: no loop
    restart_with_huge_pages()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest"])  # called in-process by another program
    restart_with_huge_pages()
    assert calls == []


@pytest.mark.skipif(not huge_pages_supported(), reason="needs glibc >= 2.35 and THP madvise/always")
def test_restart_really_restarts_once_with_the_tunable(tmp_path):
    pkg = tmp_path / "longqa"
    pkg.mkdir()
    (pkg / "__main__.py").write_text(
        textwrap.dedent(
            """
            import os
            from longqa.train.cpu_memory import restart_with_huge_pages
            print("start", os.getpid(), flush=True)
            restart_with_huge_pages()
            print("tunables", os.environ.get("GLIBC_TUNABLES"), os.getpid())
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    repo = str(cpu_memory.Path(cpu_memory.__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo
    out = subprocess.run(
        [sys.executable, str(pkg / "__main__.py")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split("\n")
    starts = [ln for ln in out if ln.startswith("start")]
    assert len(starts) == 2  # the script ran twice: before and after the exec
    pid = starts[0].split()[1]
    assert starts[1].split()[1] == pid
    assert f"tunables {HUGE_PAGES_TUNABLE} {pid}" in out


@pytest.mark.parametrize("on", [True, False])
def test_cpu_return_freed_switch(monkeypatch, on):
    import longqa.train.model as train_model
    from longqa.config.recipe import load_recipe

    calls: list[int] = []
    monkeypatch.setattr(train_model, "release_freed_memory_on_cpu", lambda: calls.append(1) or True)
    recipe = load_recipe("smollm2-135m-yarn16k", [f"memory.cpu_return_freed={str(on).lower()}"])
    rt = train_model.runtime_for(recipe, "cpu")
    assert calls == ([1] if on else [])
    assert any("returned to the OS" in n for n in rt.notices) == on


@pytest.mark.parametrize(
    ("length", "on"), [(2048, False), (4095, False), (4096, True), (8192, True)]
)
def test_cpu_return_freed_auto_follows_the_length(length, on):
    from longqa.config.recipe import load_recipe, returns_freed_memory

    recipe = load_recipe("smollm2-135m-yarn16k", [f"train.max_length={length}"])
    assert recipe.memory.cpu_return_freed == "auto"  # the default
    assert returns_freed_memory(recipe) is on
    phases = load_recipe(
        "smollm2-135m-yarn16k",
        ["train.max_length=2048", "train.phases.0.max_length=8192"],
    )
    assert returns_freed_memory(phases)  # the longest phase counts
