"""Real ``longqa`` subprocesses for the interrupt and folder-lock tests.

``start(args, log)`` runs ``python -m longqa *args`` with SIGINT at its default disposition (a
process started from a backgrounded pytest may inherit SIG_IGN for it, and Python then keeps
ignoring Ctrl-C), stdout and stderr to ``log``; ``finish(proc)`` waits and returns
``(exit code, seconds, stderr lines)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(args: list[str], log: Path) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("LONGQA_WAIT", None)
    fh = open(log, "w", encoding="utf-8")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "longqa", *args],
        cwd=REPO,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_signals,
    )
    proc.log = log  # type: ignore[attr-defined]
    proc.fh = fh  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, float, list[str]]:
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.fh.close()  # type: ignore[attr-defined]
    lines = [line for line in proc.log.read_text(encoding="utf-8").splitlines() if line.strip()]  # type: ignore[attr-defined]
    return rc, time.monotonic() - t0, lines


def run(args: list[str], log: Path, timeout: float = 300) -> tuple[int, float, list[str]]:
    return finish(start(args, log), timeout)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll ``cond`` every 10 ms until true; fail when ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended first:\n{proc.log.read_text()[-3000:]}")  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, float, list[str]]:
    """Send ``sig`` to a process stopped with SIGSTOP and let it go on; returns its exit code,
    the seconds until it printed its last line (``interrupted: ...``; the interpreter's own
    teardown after it is not counted: it varies with the machine's load) and its lines."""
    os.kill(proc.pid, sig)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGCONT)
    said = None
    while proc.poll() is None and time.monotonic() - t0 < 60:
        if said is None and "interrupted:" in proc.log.read_text(encoding="utf-8"):  # type: ignore[attr-defined]
            said = time.monotonic() - t0
        time.sleep(0.01)
    rc, _, lines = finish(proc, timeout=60)
    return rc, said if said is not None else time.monotonic() - t0, lines
