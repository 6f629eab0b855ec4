"""Live-tensor peak of one SmolLM2-shaped training step with peft's LoRA dropout vs the lean one.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_lora_dropout_memory.py --tokens 2048 8192

A random-initialised model of SmolLM2-135M's shape (30 layers, hidden 576, 9/3 heads, vocab
49,152, tied embeddings), fp32 on CPU, LoRA r16 alpha 64 dropout 0.1 on all linears with trained
norms, non-reentrant checkpointing, the chunked loss (1,024-token chunks): one forward + backward
per setting under :class:`live_memory.LiveStorageTracker`, which records the peak of the storages
operators create (weights excluded), so the number is the step's live activation peak, not RSS
(which glibc's heap reuse blurs at these sizes). Settings: ``kernels.lean_lora_dropout`` off and
on. Writes ``results/lora_dropout_memory.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_memory import LiveStorageTracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]


def build() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from longqa.testing.tiny import with_lora

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      tie_word_embeddings=True, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    model = with_lora(LlamaForCausalLM(cfg), r=16, lora_alpha=64, lora_dropout=0.1,
                      target_modules="all-linear", modules_to_save=NORMS)  # fmt: skip
    base = model.get_base_model()
    base.activation_checkpointing_enable({"use_reentrant": False})
    base.enable_input_require_grads()
    return model.train()


def live_peak(model: torch.nn.Module, tokens: int, lean: bool) -> int:
    from longqa.config.recipe import KernelsConfig, MemoryConfig
    from longqa.ops.causal_lm import causal_lm_loss
    from longqa.patch.kernels import apply_kernels

    apply_kernels(model.get_base_model(), KernelsConfig(lean_lora_dropout=lean), MemoryConfig())
    ids = torch.randint(0, 49152, (1, tokens), generator=torch.Generator().manual_seed(0))
    tracker = LiveStorageTracker()
    with tracker:
        total, n = causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk_size=1024)
        (total / n).backward()
    model.zero_grad(set_to_none=True)
    return tracker.peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--out", default=str(RESULTS / "lora_dropout_memory.md"))
    a = p.parse_args(argv)
    model = build()
    rows = []
    for t in a.tokens:
        peft, lean = (live_peak(model, t, lean) for lean in (False, True))
        rows.append(f"| {t:,} | {peft / 2**20:.1f} | {lean / 2**20:.1f} | {lean / peft:.2f}× |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "## Live-tensor peak of a training step: peft's LoRA dropout vs `kernels.lean_lora_dropout`",
        "", f"Command: `python benchmarks/bench_lora_dropout_memory.py --tokens "
        f"{' '.join(map(str, a.tokens))}`  ",
        "SmolLM2-135M's shape, random weights, fp32 on CPU, LoRA r16 dropout 0.1 on all linears + "
        "trained norms, checkpointing, chunked loss (1,024 tokens); operator-made storages only.",
        "", "| tokens | peft dropout (MB) | lean dropout (MB) | ratio |", "|---|---|---|---|",
        *rows,
    ]) + "\n"  # fmt: skip
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
