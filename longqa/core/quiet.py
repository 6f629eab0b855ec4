"""Drop third-party console messages that are wrong for longqa's use, each by its exact text.

Usage::

    from longqa.core.quiet import quiet_library_notices
    quiet_library_notices()        # done once when ``longqa`` is imported

* bitsandbytes (0.49+) on a CPU with AVX512-BF16 logs, at import, that it failed to load its CPU
  4-bit inference kernel from the ``kernels-community`` hub repository and asks to
  ``pip install kernels``. longqa never downloads kernels from a hub, and it keeps the 4-bit layers
  it trains off that inference path (:func:`longqa.train.model.keep_4bit_trainable`), so the notice
  only misleads. bitsandbytes falls back to its own bundled kernel.

A filter on the one logger, matching the message's start: any other message still shows.
"""

from __future__ import annotations

import logging

_NOTICES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}


class _DropStartingWith(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_library_notices() -> None:
    """Install the filters (idempotent); the libraries need not be imported yet."""
    for name, prefix in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefix))
