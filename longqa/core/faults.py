"""Write faults (full disk, read-only folder, quota) as one line naming the path.

Usage::

    from longqa.core.faults import writing

    with writing(target):             # an OSError such as ENOSPC becomes WriteFailed naming target
        write_temp_then_rename(target)

The writers around it keep the previous complete state (temp file + rename: the old file stays
until the new one is complete), so the message can say so. The CLI turns a stray fault
(``disk_fault_message``) into the same one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from longqa.core.errors import LongqaError

DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}


class WriteFailed(LongqaError):
    """A write failed for a reason of the disk or folder (full, read-only, no permission)."""


def is_disk_fault(exc: BaseException) -> bool:
    """An ``OSError`` a user fixes on the disk (space, permissions, read-only mount)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_fault_message(
    exc: BaseException, path: str | os.PathLike[str] | None = None
) -> str | None:
    """``cannot write PATH: No space left on device`` for a disk fault, else ``None``."""
    if not is_disk_fault(exc):
        return None
    assert isinstance(exc, OSError)
    where = path if path is not None else (exc.filename or "the output")
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return f"cannot write {where}: {reason} (the previous complete state is untouched)"


def write_failed(path: str | os.PathLike[str], exc: BaseException) -> WriteFailed:
    """The one-line error for a failed write of ``path`` (any OSError, or a library's error)."""
    message = disk_fault_message(exc, path)
    if message is None:
        message = f"cannot write {path}: {exc} (the previous complete state is untouched)"
    return WriteFailed(message)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a disk fault inside the block into :class:`WriteFailed` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if not is_disk_fault(exc):
            raise
        raise write_failed(path, exc) from None
