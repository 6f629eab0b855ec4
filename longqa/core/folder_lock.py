"""One writer per output folder: a lock held for a run's lifetime, its holder named beside it.

Usage::

    from longqa.core.folder_lock import output_lock

    with output_lock("runs/data"):        # a second process on runs/data stops here
        ...                               # write into runs/data

The lock is ``<folder>/.longqa.lock`` (the ``filelock`` package: an OS file lock, released by the
kernel when its process dies, even by ``kill -9``); ``<folder>/.longqa.lock.json`` names the
holder (pid, host, command, start time); both are removed when the run ends. A second process
asking for the folder fails at once with :class:`FolderBusy` (one line naming the holder's pid and
command), or waits for it when ``wait`` (the CLI's ``--wait``, ``$LONGQA_WAIT=1``) is set. A
holder record left by a process that died without releasing (``kill -9``) is taken over with a
notice, so ``--resume`` keeps working.

An output replaced as a whole (``longqa export`` renames a finished folder into place, a GGUF file)
is locked beside it (``beside=True``: ``<parent>/.<name>.longqa.lock``). A command locks with
:func:`hold_for_command`, released when the command ends (:func:`release_held`).

Locks are re-entrant within a process (the CLI and the library function it calls may both lock the
same folder). Under ``torch.distributed`` only rank 0 (``$RANK`` unset or 0) locks: the ranks of one
run share its folder.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from longqa.core.errors import LongqaError

LOCK_NAME = ".longqa.lock"
HOLDER_NAME = ".longqa.lock.json"

_held: dict[Path, tuple[object, int]] = {}
_command_locks = contextlib.ExitStack()
_atexit_registered = False


class FolderBusy(LongqaError):
    """Another live process holds the folder's lock."""


def wait_requested() -> bool:
    """Whether a busy folder is waited for (``--wait`` sets ``$LONGQA_WAIT=1``)."""
    return os.environ.get("LONGQA_WAIT", "") not in ("", "0")


def command_line() -> str:
    """This process's command as a user typed it (``longqa build-data ...``), at most 200 chars."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith(("longqa/cli/app.py", "longqa/__main__.py")) or argv[0] == "-m"):
        argv[0] = "longqa"
    elif argv and argv[0] == "-c":
        argv.insert(0, "python")
    elif argv:
        argv[0] = os.path.basename(argv[0])
    text = shlex.join(argv).replace("\n", " ")  # one line
    return text if len(text) <= 200 else text[:197] + "..."


def read_holder(holder_file: str | os.PathLike[str]) -> dict[str, object] | None:
    """The holder record in ``holder_file`` (``None`` when there is none or it is unreadable)."""
    try:
        data = json.loads(Path(holder_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict[str, object] | None) -> str:
    if not holder:
        return "another process"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {holder.get('pid')}{where} (`{holder.get('command', '?')}`)"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_paths(folder: str | os.PathLike[str], beside: bool = False) -> tuple[Path, Path]:
    """The lock file and the holder record of ``folder``."""
    path = Path(folder)
    if beside:
        stem = f".{path.name}.longqa"
        return path.parent / f"{stem}.lock", path.parent / f"{stem}.lock.json"
    return path / LOCK_NAME, path / HOLDER_NAME


def hold_for_command(folder: str | os.PathLike[str], *, beside: bool = False) -> Path:
    """Lock ``folder`` until :func:`release_held` (the CLI calls it when the command ends;
    at the latest at interpreter exit)."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(release_held)
        _atexit_registered = True
    _command_locks.enter_context(output_lock(folder, beside=beside))
    return Path(folder)


def release_held() -> None:
    """Release every lock taken with :func:`hold_for_command`."""
    _command_locks.close()


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike[str],
    *,
    wait: bool | None = None,
    beside: bool = False,
    notice: object = None,
) -> Iterator[Path]:
    """Hold ``folder``'s lock for the duration (creating the folder, or with ``beside`` its
    parent); see the module docstring. ``notice`` (a callable taking one line; default: print to
    stderr) receives the take-over and waiting notices."""
    from filelock import FileLock, Timeout

    from longqa.core.paths import atomic_write_json

    path = Path(folder)
    if os.environ.get("RANK", "0") != "0":
        yield path
        return
    lock_file, holder_file = lock_paths(path, beside)
    key = lock_file.resolve()
    if key in _held:
        lock, depth = _held[key]
        _held[key] = (lock, depth + 1)
        try:
            yield path
        finally:
            lock, depth = _held[key]
            _held[key] = (lock, depth - 1)
        return

    say = notice if callable(notice) else (lambda line: print(line, file=sys.stderr, flush=True))
    wait = wait_requested() if wait is None else wait
    created = not lock_file.parent.exists()
    lock = FileLock(str(lock_file), thread_local=False)
    try:
        _acquire(lock, lock_file, timeout=0)
    except Timeout:
        holder = read_holder(holder_file)
        if not wait:
            raise FolderBusy(
                f"{path} is in use by {_describe(holder)}; wait for it to finish, or add --wait"
            ) from None
        say(f"waiting for {_describe(holder)} to finish with {path} ...")
        _acquire(lock, lock_file, timeout=-1)  # a Ctrl-C meanwhile raises Interrupted
    try:
        stale = read_holder(holder_file)
        if stale and stale.get("pid") != os.getpid():
            gone = "no longer running" if not _pid_alive(stale.get("pid")) else "no longer holds it"
            say(f"notice: {path}: taking over the lock of {_describe(stale)}, {gone}")
        atomic_write_json(
            holder_file,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command_line(),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )
    except BaseException:
        lock.release()
        raise
    _held[key] = (lock, 1)
    try:
        yield path
    finally:
        del _held[key]
        with contextlib.suppress(OSError):  # nothing left behind (a waiter takes a new file)
            holder_file.unlink()
            lock_file.unlink()
            if created and not any(lock_file.parent.iterdir()):
                lock_file.parent.rmdir()  # a run that wrote nothing leaves no folder
        lock.release()


def _acquire(lock: object, lock_file: Path, timeout: float) -> None:
    """``lock.acquire`` that also holds when the lock file is removed meanwhile (every holder
    removes it before releasing): the lock counts only if the file locked is still the one at
    ``lock_file``, else it is taken again."""
    while True:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=timeout, poll_interval=0.2)  # type: ignore[attr-defined]
        except FileNotFoundError:
            continue
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        try:
            same = fd is None or os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except OSError:
            same = False
        if same:
            return
        lock.release()  # type: ignore[attr-defined]
