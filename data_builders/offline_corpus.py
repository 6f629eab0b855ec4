"""A real-prose corpus available offline everywhere, for demos and notebooks.

Usage::

    from data_builders.offline_corpus import default_corpus
    corpus = default_corpus(Path("runs/demo"))  # a folder of .txt files

The shared essays (``longqa.core.paths.shared_essays()``) when present; otherwise the documentation
of Python's standard library, rendered once as plain text into ``<out>/corpus``.
"""

from __future__ import annotations

import pydoc
from pathlib import Path

from longqa.core.paths import atomic_write_text, shared_essays

_STDLIB_MODULES = [
    "collections", "functools", "itertools", "pathlib", "json", "csv", "argparse", "logging",
    "threading", "subprocess", "socket", "sqlite3", "unittest", "datetime", "decimal", "fractions",
    "statistics", "random", "textwrap", "string", "re", "shutil", "tempfile", "zipfile", "tarfile",
    "email", "http.client", "urllib.request", "asyncio", "concurrent.futures", "dataclasses", "enum",
    "typing", "inspect", "heapq", "bisect", "queue", "contextlib", "abc", "copy", "pickle", "gzip",
]  # fmt: skip


def default_corpus(out: Path) -> Path:
    """The shared essays when present, else stdlib documentation written under ``out``."""
    shared = shared_essays()
    if shared is not None:
        return shared
    return stdlib_docs(out / "corpus")


def stdlib_docs(folder: Path) -> Path:
    """The documentation of Python's standard library as plain-text files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in _STDLIB_MODULES:
        target = folder / f"{name}.txt"
        if not target.exists():
            try:
                text = pydoc.render_doc(name, renderer=pydoc.plaintext)
            except (ImportError, pydoc.ErrorDuringImport):  # missing from this Python build
                continue
            atomic_write_text(target, text)
    return folder
