"""The Triton kernels compile for a real GPU target (sm_90 PTX) — no GPU needed for that.

The check runs in a fresh interpreter: once the Triton CPU interpreter has run in a process (other
test modules), triton's language module is patched for it and cannot compile for a GPU any more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compile_all() -> list[str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from longqa.ops import ce_triton, rope_triton

    target = GPUTarget("cuda", 90, 32)
    done = []
    fn = JITFunction(ce_triton._ce_rows_kernel)
    sig = dict(
        logits_ptr="*bf16", stride_row="i64", labels_ptr="*i64", loss_ptr="*fp32",
        scale_ptr="*fp32", n_cols="i32", ignore_index="i32", BLOCK="constexpr",
    )  # fmt: skip
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={"BLOCK": 4096}), target)
    done.append(f"ce:{'.entry _ce_rows_kernel' in kernel.asm['ptx']}")
    fn = JITFunction(rope_triton._rope_kernel)
    pointers = {"q_ptr", "k_ptr", "qo_ptr", "ko_ptr", "cos_ptr", "sin_ptr"}
    for has_pos in (False, True):
        sig = {}
        for name in fn.arg_names:
            if name in pointers:
                sig[name] = "*bf16"
            elif name == "pos_ptr":
                sig[name] = "*i64" if has_pos else "*bf16"
            else:
                sig[name] = "constexpr" if name.isupper() else "i32"
        cx = {"SIGN": -1.0, "HAS_POS": has_pos, "BLOCK_QH": 32, "BLOCK_KH": 8, "BLOCK_D": 64}
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target)
        done.append(f"rope{int(has_pos)}:{'.entry _rope_kernel' in kernel.asm['ptx']}")
    return done


def test_kernels_compile_to_ptx_for_sm90(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ce:True", "rope0:True", "rope1:True"]


if __name__ == "__main__":
    print("\n".join(compile_all()))
