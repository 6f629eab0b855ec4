"""Drop third-party console messages that are wrong for longqa's use, each by its exact text.

Usage::

    from longqa.core.quiet import quiet_library_notices
    quiet_library_notices()        # done once when ``longqa`` is imported
    library_progress_bars(False)   # ``--no-progress``: transformers' and the hub's bars too

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


def library_progress_bars(enabled: bool) -> None:
    """Show or hide the progress bars transformers and huggingface_hub draw themselves (the
    "Loading weights" bar of every model load, downloads), so ``--no-progress`` silences them
    too."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        disable_progress_bars()
