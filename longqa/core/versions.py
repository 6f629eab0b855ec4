"""Installed package versions against the lock the test suite was last green with.

Usage::

    from longqa.core.versions import default_lock_path, lock_differences
    diffs = lock_differences(default_lock_path())   # [] when every locked package matches
    for d in diffs: print(d)                        # "transformers 5.26.0 (locked 5.25.0)"

The lock is ``requirements/cpu-lock.txt`` in a checkout (``make lock`` writes it with pip-tools;
``make install`` installs through it). A pin without a local build tag (``torch==2.13.0``) matches any
build of that release (``2.13.0+cpu``, ``2.13.0+cu128``), as pip's own specifiers do (PEP 440).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from longqa.core.errors import LongqaError

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


@dataclass(frozen=True)
class VersionDiff:
    package: str
    locked: str
    installed: str | None  # None: not installed

    def __str__(self) -> str:
        now = self.installed if self.installed is not None else "not installed"
        return f"{self.package} {now} (locked {self.locked})"


def default_lock_path() -> Path:
    """``requirements/cpu-lock.txt`` beside the ``longqa`` package (present in a checkout)."""
    return Path(__file__).resolve().parents[2] / "requirements" / "cpu-lock.txt"


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` for every ``name==version`` line of a pip constraints file."""
    pins: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LongqaError(f"{path}: cannot read the lock ({exc.strerror or exc})") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", "-")):
            continue
        match = _PIN.match(text)
        if match is None:
            raise LongqaError(f"{path}:{number}: expected 'name==version', got {text!r}")
        pins[normalise(match.group(1))] = match.group(2)
    return pins


def same_release(installed: str, locked: str) -> bool:
    """True when ``installed`` satisfies ``==locked`` (a local build tag matches an untagged pin)."""
    try:
        have, want = Version(installed), Version(locked)
    except InvalidVersion:
        return installed == locked
    return have == want or (want.local is None and have.public == want.public)


def lock_differences(lock: Path, *, only_installed: bool = True) -> list[VersionDiff]:
    """Locked packages whose installed version differs (and, unless ``only_installed``, those
    missing); packages the lock holds for extras a user did not install are skipped by default."""
    diffs = []
    for name, locked in sorted(read_lock(lock).items()):
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None:
            if not only_installed:
                diffs.append(VersionDiff(name, locked, None))
        elif not same_release(installed, locked):
            diffs.append(VersionDiff(name, locked, installed))
    return diffs
