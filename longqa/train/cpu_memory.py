"""CPU training memory: give freed activations back to the OS without paying for it in page faults.

Usage::

    from longqa.train.cpu_memory import release_freed_memory_on_cpu, restart_for_cpu_training
    restart_for_cpu_training(recipe, notice=print)  # CLI, before training: re-exec once if useful
    release_freed_memory_on_cpu()          # runtime_for does this when memory.cpu_return_freed

glibc raises its mmap threshold after large frees, so activations that gradient checkpointing
recomputes and frees layer by layer stay in the heap: a CPU step's RSS then grows like no
checkpointing at all (2.6× at 2K tokens, ``benchmarks/results/train_cpu.md``). Fixing the threshold
at 128 KiB (``mallopt(M_MMAP_THRESHOLD)``) puts every large tensor in its own mapping, returned to
the OS when freed. The price is a fresh mapping per tensor whose 4 KiB pages the kernel faults in
one by one: 0.52 CPU-s per GB allocated instead of 0.20 (``benchmarks/results/cpu_alloc.md``).

With transparent huge pages in ``madvise`` (or ``always``) mode, glibc's tunable
``glibc.malloc.hugetlb=1`` (glibc ≥ 2.35) advises those mappings to use 2 MiB pages: 512× fewer
faults, and the same cost per GB as glibc's default. Tunables are read when a process starts, so
:func:`restart_with_huge_pages` re-executes the command once with the tunable added to
``GLIBC_TUNABLES`` (the CLI calls it before training on CPU; a library caller can export the
variable itself). Nothing here applies on CUDA.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def release_freed_memory_on_cpu() -> bool:
    """Make glibc return freed large blocks to the OS (fixed 128 KiB mmap threshold).

    Linux only; returns whether the setting was applied. ``memory.cpu_return_freed: false`` keeps
    glibc's default (faster without huge pages, but RSS keeps every freed activation).
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, None elsewhere (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def huge_pages_supported(thp_mode_file: Path = THP_MODE_FILE) -> bool:
    """glibc ≥ 2.35 and transparent huge pages in ``madvise`` or ``always`` mode."""
    version = glibc_version()
    if version is None or version < (2, 35):
        return False
    try:
        mode = thp_mode_file.read_text()
    except OSError:
        return False
    return "[madvise]" in mode or "[always]" in mode


def huge_pages_active(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process started with the huge-pages tunable."""
    return HUGE_PAGES_TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def with_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` whose ``GLIBC_TUNABLES`` includes the huge-pages tunable."""
    env = dict(environ)
    if not huge_pages_active(env):
        current = env.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = f"{current}:{HUGE_PAGES_TUNABLE}" if current else HUGE_PAGES_TUNABLE
    return env


def is_longqa_command(argv0: str | None = None) -> bool:
    """Whether this process is the ``longqa`` command: its console script, or ``python -m longqa``."""
    path = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    if path.name == "longqa":
        return True
    return path.name == "__main__.py" and path.parent.name == "longqa"


def restart_with_huge_pages(notice: Callable[[str], None] | None = None) -> None:
    """Re-execute this command with the huge-pages tunable, when it is supported and missing.

    Only the ``longqa`` command itself restarts (its console script or ``python -m longqa``), never
    a program that called the CLI in-process (a test runner, a notebook). Returns (doing nothing)
    when the tunable is already set, unsupported here, or this is not the ``longqa`` command;
    otherwise it does not return (``os.execve`` replaces the process, same pid).
    """
    argv = list(getattr(sys, "orig_argv", []) or [])
    if huge_pages_active() or not argv or not is_longqa_command() or not huge_pages_supported():
        return
    if notice is not None:
        notice(
            f"CPU: restarting with GLIBC_TUNABLES={HUGE_PAGES_TUNABLE} (huge pages for freed memory)"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], with_huge_pages(os.environ))


def restart_for_cpu_training(recipe: Any, notice: Callable[[str], None] | None = None) -> None:
    """:func:`restart_with_huge_pages` when ``recipe`` will train on CPU and return freed memory
    (``memory.cpu_return_freed``: true, or ``auto`` at 4K tokens and more); nothing on CUDA."""
    from longqa.config.recipe import returns_freed_memory

    if not returns_freed_memory(recipe) or huge_pages_active():
        return
    import torch

    if not torch.cuda.is_available():
        restart_with_huge_pages(notice)
