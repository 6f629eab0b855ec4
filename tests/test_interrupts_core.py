"""The stop mechanism (``longqa.core.interrupt``) and the folder lock, in small real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupt_fixtures import REPO

from longqa.core.folder_lock import FolderBusy, output_lock

CHILD = (
    "import sys, time\n"
    "from longqa.core.interrupt import graceful, handle_signals, protected, stop_requested\n"
    "try:\n"
    "    with handle_signals(), graceful():\n"
    "        print('up', flush=True)\n"
    "        while not stop_requested():\n"
    "            time.sleep(0.01)\n"
    "        with protected():  # saving a checkpoint: the grace timer waits for it\n"
    "            time.sleep(1.5)\n"
    "            print('child saved its work', flush=True)\n"
    "except KeyboardInterrupt:\n"
    "    sys.exit(130)\n"
)
SCRIPT = f"""
CHILD = {CHILD!r}
import asyncio, sys, time
from longqa.core.interrupt import graceful, handle_signals, run_async, stop_requested
mode = sys.argv[1]
if mode == "parent":  # a launcher: the child stops by itself, taking its time
    import subprocess
    from longqa.core.interrupt import wait_for_child
    with handle_signals(), graceful():
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "up"
        print("ready", flush=True)
        rc = wait_for_child(child)
        print(child.stdout.read().strip(), flush=True)
        sys.exit(rc)
try:
    with handle_signals(), graceful():
        print("ready", flush=True)
        if mode == "polls":
            while not stop_requested():
                time.sleep(0.01)
            print("stopped at a safe point", flush=True)
        elif mode == "busy":  # never polls: the grace timer stops it
            while True:
                sum(range(1000))
        elif mode == "async":
            run_async(asyncio.sleep(60))
except KeyboardInterrupt as exc:
    print(type(exc).__name__, flush=True)
    sys.exit(130)
"""


def _start(mode: str, grace: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LONGQA_STOP_GRACE": str(grace)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen, *signals: int) -> tuple[int, float, str]:
    t0 = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, time.monotonic() - t0, out.strip()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_a_polling_loop_to_stop(sig):
    rc, seconds, out = _stop(_start("polls", grace=30), sig)
    assert (rc, out) == (0, "stopped at a safe point") and seconds < 5


def test_a_loop_that_never_polls_is_stopped_after_the_grace_period():
    rc, seconds, out = _stop(_start("busy", grace=1), signal.SIGINT)
    assert (rc, out) == (130, "Interrupted") and 1 <= seconds < 6


def test_a_second_signal_stops_at_once():
    rc, seconds, out = _stop(_start("busy", grace=60), signal.SIGINT, signal.SIGINT)
    assert (rc, out) == (130, "Interrupted") and seconds < 5


def test_a_stop_cancels_the_asyncio_run():
    rc, seconds, out = _stop(_start("async", grace=60), signal.SIGTERM)
    assert (rc, out) == (130, "Interrupted") and seconds < 5


HOLDER = (
    "from longqa.core.folder_lock import output_lock; import sys, time\n"
    "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))"
)


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(seconds)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_busy_folder_names_its_holder_and_wait_waits(tmp_path):
    folder = tmp_path / "out"
    holder = _holder(folder, 1.5)
    with pytest.raises(FolderBusy) as err:
        with output_lock(folder, wait=False):
            pass
    assert str(err.value).startswith(f"{folder} is in use by pid {holder.pid} (`python -c ")
    t0 = time.monotonic()
    lines = []
    with output_lock(folder, wait=True, notice=lines.append):
        waited = time.monotonic() - t0
        assert json.loads((folder / ".longqa.lock.json").read_text())["pid"] == os.getpid()
    assert waited > 0.5 and len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"waiting for pid {holder.pid} (`python -c ")
    assert lines[0].endswith(f" 1.5`) to finish with {folder} ...")
    holder.wait()
    assert not (folder / ".longqa.lock.json").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_notice(tmp_path):
    folder = tmp_path / "out"
    holder = _holder(folder, 60)
    holder.kill()
    holder.wait()
    lines = []
    with output_lock(folder, notice=lines.append), output_lock(folder):  # re-entrant
        pass
    assert len(lines) == 1 and f"taking over the lock of pid {holder.pid}" in lines[0]
    assert lines[0].endswith("no longer running")


def test_a_folder_replaced_whole_is_locked_beside_it_and_an_unused_one_is_not_left(tmp_path):
    with output_lock(tmp_path / "export", beside=True):
        assert (tmp_path / ".export.longqa.lock.json").is_file()
        assert not (tmp_path / "export").exists()
    with output_lock(tmp_path / "never" / "written"):
        pass
    assert not (tmp_path / "never" / "written").exists()


def test_a_launcher_passes_the_stop_on_and_waits_for_its_child():
    rc, seconds, out = _stop(_start("parent", grace=0.3), signal.SIGTERM)  # the parent alone
    assert (rc, out) == (130, "child saved its work") and seconds >= 1.4
