"""Ctrl-C and SIGTERM for long commands: stop at the next safe point, second signal stops at once.

Usage::

    from longqa.core.interrupt import check_stop, graceful, handle_signals, stop_requested

    with handle_signals():              # the CLI does this once around every command
        with graceful():                # a loop that polls: the first signal only asks to stop
            for piece in pieces:
                check_stop()            # raises Interrupted once a stop was asked for
                do(piece)               # a piece in flight finishes (or is discarded by the raise)

Semantics (one mechanism for every command):

* Outside a :func:`graceful` region the first SIGINT/SIGTERM raises :class:`Interrupted` (a
  ``KeyboardInterrupt``) where the main thread is, as Python's default handler does: code without
  safe points stops at once; atomic writes (temp file + rename) never leave half a file.
* Inside a :func:`graceful` region the first signal sets a flag (:func:`stop_requested`) that the
  loop polls at its safe points (a written sample, a training step), cancels the asyncio task run by
  :func:`run_async` (requests in flight are discarded; answers already received stay cached), and
  arms a timer: a loop that has not stopped after :data:`GRACE_SECONDS` is interrupted as by a
  second signal, unless it is inside :func:`protected` (a checkpoint being written), where it is
  interrupted when that section ends.
* A second signal raises :class:`Interrupted` at once.
* The CLI prints ``interrupted: rerun the same command to continue`` and exits 130.

Across ranks, the training loop all-reduces the flag at step boundaries (see
``longqa.train.stopping``), so a signal received by one rank stops every rank at the same step.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

MESSAGE = "interrupted: rerun the same command to continue"
EXIT_CODE = 130
GRACE_SECONDS = float(os.environ.get("LONGQA_STOP_GRACE", "5"))
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by SIGINT/SIGTERM (a ``KeyboardInterrupt``, so cleanup code that handles
    Ctrl-C handles it too)."""


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.stop = threading.Event()
        self.signals = 0
        self.graceful = 0  # depth of graceful() regions
        self.protected = 0  # depth of protected() sections
        self.escalate_pending = False
        self.tasks: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
        self.timer: threading.Timer | None = None
        self.installed = False


_state = _State()


def stop_requested() -> bool:
    """True once SIGINT/SIGTERM (or :func:`request_stop`) asked the run to stop."""
    return _state.stop.is_set()


def check_stop() -> None:
    """Raise :class:`Interrupted` when a stop was asked for (call at safe points of long loops)."""
    if _state.stop.is_set():
        raise Interrupted()


def request_stop() -> None:
    """Ask the run to stop as a first signal does (tests, other ranks' flag, a UI button)."""
    _state.stop.set()
    for loop, task in list(_state.tasks):
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(task.cancel)


def clear_stop() -> None:
    """Forget a stop request (a notebook or a test going on after an interrupted run)."""
    _state.stop.clear()
    _state.signals = 0
    _state.escalate_pending = False
    if _state.timer is not None:
        _state.timer.cancel()
        _state.timer = None


def _handler(signum: int, frame: Any) -> None:
    _state.signals += 1
    first = _state.signals == 1
    request_stop()
    if first and _state.graceful:
        if GRACE_SECONDS > 0 and _state.timer is None:
            _state.timer = threading.Timer(GRACE_SECONDS, _escalate)
            _state.timer.daemon = True
            _state.timer.start()
        return
    if _state.protected and first:  # only the grace timer waits for a protected section
        _state.escalate_pending = True
        return
    raise Interrupted()


def _escalate() -> None:
    """The grace period ran out: interrupt the main thread as a second signal would."""
    if not _state.installed:
        return
    if _state.protected:
        _state.escalate_pending = True
        return
    _state.signals = max(_state.signals, 1)
    ours = [s for s in SIGNALS if signal.getsignal(s) is _handler]  # SIGINT may stay ignored
    if ours:
        _thread.interrupt_main(ours[0])


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the duration (main thread only; elsewhere, and when
    already installed, a no-op; an ignored signal stays ignored). Restores the previous handlers."""
    if _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.reset()
    _state.installed = True
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:  # a signal ignored on purpose (nohup, &) stays so
            signal.signal(s, _handler)
    try:
        yield
    finally:
        if _state.timer is not None:
            _state.timer.cancel()
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _state.installed = False


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """A region whose code polls :func:`stop_requested` / :func:`check_stop` at safe points: the
    first signal only asks it to stop (see module docstring)."""
    _state.graceful += 1
    try:
        yield
    finally:
        _state.graceful -= 1


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A short section that the grace timer never cuts (a checkpoint or shard being finalised); a
    timer that fired meanwhile interrupts right after it. A second signal still stops at once."""
    _state.protected += 1
    try:
        yield
    finally:
        _state.protected -= 1
        if not _state.protected and _state.escalate_pending:
            _state.escalate_pending = False
            raise Interrupted()


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coro)`` whose task a stop request cancels; a cancelled run, or one whose
    workers returned early because a stop was asked for, raises :class:`Interrupted`."""

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None
        entry = (asyncio.get_running_loop(), task)
        _state.tasks.append(entry)
        try:
            if _state.stop.is_set():
                coro.close()
                raise Interrupted()
            return await coro
        finally:
            _state.tasks.remove(entry)

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if _state.stop.is_set():
            raise Interrupted() from None
        raise
    check_stop()
    return result


def wait_for_child(proc: Any, poll: float = 0.2) -> int:
    """Wait for a child process that stops gracefully on SIGTERM itself (the launcher of
    ``train --launch`` and its ranks): a first signal is passed on to it as SIGTERM and its own
    stop awaited (the grace timer does not cut it); a second signal gives it 10 s more, then kills
    it. Returns its exit status, 130 after a stop."""
    import subprocess
    import time

    forwarded = False
    try:
        with graceful(), protected():
            while proc.poll() is None:
                if stop_requested() and not forwarded:
                    proc.send_signal(signal.SIGTERM)
                    forwarded = True
                time.sleep(poll)
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
    return EXIT_CODE if stop_requested() else proc.returncode
