"""How every command runs: Ctrl-C/SIGTERM, disk faults and ``--wait``, in one wrapper.

Usage (``longqa.cli.app`` does this once, after registering the commands)::

    guard_commands(app, waiting={"build-data", "train", "eval", ...})

Every command then runs inside :func:`longqa.core.interrupt.handle_signals`; an interrupt prints
``interrupted: rerun the same command to continue`` and exits 130; a full disk or read-only folder
prints one ``error: cannot write PATH: ...`` line and exits 2. Commands named in ``waiting`` (a
top-level name such as ``train``, a group such as ``eval`` for all its commands, or ``group
command``) also get ``--wait``: when another process holds their output folder
(:mod:`longqa.core.folder_lock`), wait for it instead of stopping.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from longqa.core.faults import disk_fault_message
from longqa.core.folder_lock import release_held
from longqa.core.interrupt import EXIT_CODE, MESSAGE, handle_signals

WAIT_HELP = "when another run holds the output folder, wait for it to finish instead of stopping"


def guarded(func: Callable[..., Any], *, wait_option: bool = False) -> Callable[..., Any]:
    """``func`` run under the signal handlers, with interrupts and disk faults as one line
    (and a ``--wait`` flag when ``wait_option``)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        if wait_option and kwargs.pop("wait", False):
            os.environ["LONGQA_WAIT"] = "1"  # ranks and subprocesses inherit it
        with handle_signals():
            try:
                return func(*args, **kwargs)
            except KeyboardInterrupt:
                if os.environ.get("RANK", "0") == "0":  # one line, however many ranks
                    print(MESSAGE, file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_CODE) from None
            except OSError as exc:
                message = disk_fault_message(exc)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr, flush=True)
                raise typer.Exit(2) from None
            finally:
                release_held()  # the folders the command locked (hold_for_command)

    if wait_option:
        sig = inspect.signature(func, eval_str=True)
        wait = inspect.Parameter(
            "wait",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--wait", help=WAIT_HELP)],
        )
        params = list(sig.parameters.values())
        kinds = [p.kind for p in params]
        if inspect.Parameter.VAR_KEYWORD in kinds:
            params.insert(kinds.index(inspect.Parameter.VAR_KEYWORD), wait)
        else:
            params.append(wait)
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def guard_commands(app: typer.Typer, waiting: Iterable[str] = (), prefix: str = "") -> None:
    """Wrap every command of ``app`` (and of its sub-apps) with :func:`guarded`."""
    waiting = set(waiting)
    for info in app.registered_commands:
        if info.callback is None:
            continue
        name = info.name or info.callback.__name__.replace("_", "-")
        full = f"{prefix}{name}"
        group = prefix.strip()
        wait = full in waiting or (bool(group) and group in waiting)
        info.callback = guarded(info.callback, wait_option=wait)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_commands(group.typer_instance, waiting, f"{prefix}{group.name} ")
