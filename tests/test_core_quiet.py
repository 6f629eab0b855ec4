"""The one misleading library notice is dropped; the library's other messages still show."""

from __future__ import annotations

import logging
import subprocess
import sys

from longqa.core.quiet import quiet_library_notices

NAME = "bitsandbytes.backends.cpu.ops"
NOTICE = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
    "already `pip install kernels` and the kernels >= 0.11.1"
)


def test_notice_dropped_other_messages_kept(caplog):
    quiet_library_notices()
    quiet_library_notices()  # idempotent: one filter
    logger = logging.getLogger(NAME)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning(NOTICE, "No module named 'kernels'")
        logger.warning("gemv_4bit: something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["gemv_4bit: something else went wrong"]


def test_importing_longqa_then_bitsandbytes_prints_nothing():
    code = "import longqa, bitsandbytes"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kernels-community" not in out.stderr
