"""Training-step stages of ``gpu_check.sh``: peak memory and tokens/s per variant, longest length.

Usage (normally through ``benchmarks/gpu_check.py train|longest``)::

    from gpu_train import run_train_stage
    run_train_stage(env, out_dir, models=["llama3-8b"], lengths=[16384, 32768], budget_s=240)
    # the longest-length stage: gpu_longest.py

Random-initialised models with real shapes (Llama-3-8B; Qwen-14B's dims in the Qwen2 layout that
``longqa`` converts it to), decoder linears in bitsandbytes NF4, LoRA r=16 on all projections,
non-trainable norms, SDPA attention, non-reentrant gradient checkpointing, batch 1, bf16 autocast
with the embedding and LM head in fp32 as ``prepare_model_for_kbit_training`` leaves them (what
``longqa train`` does). One forward + backward per cell after one warm-up step per variant.
Variants: plain transformers + peft (the model's own loss), transformers + Liger-Kernel
(``apply_liger_kernel_to_*``: RoPE, RMSNorm, SwiGLU, fused linear cross-entropy), and longqa with
each switch and all of them. Cells are measured in priority order and skipped, with a line, once
the stage's time box would be exceeded. Each cell is appended to ``train.jsonl`` and the Markdown
table rewritten as it goes. The planner's estimate (without its CUDA-context + slack item) stands
beside each measured peak.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHAPES = {  # public configs; weights random
    "llama3-8b": dict(family="llama", recipe="llama3-8b-abf128k", hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "qwen-14b": dict(family="qwen2", recipe="qwen14b-yarn32k", hidden_size=5120,
                     intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40,
                     num_key_value_heads=40, vocab_size=152064, rope_theta=10000.0),
    "tiny": dict(family="llama", recipe="llama3-8b-abf128k", hidden_size=64, intermediate_size=128,
                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=128, rope_theta=10000.0),
}  # fmt: skip
VARIANTS: dict[str, dict[str, bool]] = {  # longqa switches; "hf"/"liger" use the model's loss
    "transformers+peft": {"hf": True},
    "longqa all": {"ce": True, "rope": True, "offload": True, "tiled": True, "auto_chunk": True,
                   "lean": True, "norm": True, "dropout": True},
    "longqa all + bf16 residual": {"ce": True, "rope": True, "offload": True, "tiled": True,
                                   "auto_chunk": True, "lean": True, "norm": True,
                                   "dropout": True, "bf16": True},
    "transformers+Liger": {"liger": True},
    "longqa fused CE": {"ce": True},
    "longqa tiled MLP": {"tiled": True},
    "longqa fused RoPE": {"rope": True},
    "longqa offload": {"offload": True},
}  # fmt: skip
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Env:
    device: str
    dry_run: bool
    deadline: float = field(default_factory=lambda: float("inf"))

    @property
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def liger_available() -> str | None:
    """Liger-Kernel's version, or None when it cannot be imported here."""
    try:
        import importlib.metadata

        import liger_kernel.transformers  # noqa: F401

        return importlib.metadata.version("liger-kernel")
    except Exception:
        return None


def build_model(env: Env, name: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = {k: v for k, v in SHAPES[name].items() if k not in ("family", "recipe")}
    cfg_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[SHAPES[name]["family"]]
    config = cfg_cls(**spec, max_position_embeddings=1 << 21, attn_implementation="sdpa")
    dtype = torch.float32 if env.dry_run else torch.bfloat16
    with torch.device(env.device):
        model = model_cls(config).to(dtype)
    if not env.dry_run:
        from bench_kernels import quantize_4bit

        quantize_4bit(model, dtype)
    for p in model.parameters():  # as prepare_model_for_kbit_training: the rest in fp32
        if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit":
            p.data = p.data.float()
    model.requires_grad_(False)
    model.config.use_cache = False
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)  # the recipes' rank and dropout (the planner's terms)
    return model.train()


def apply_variant(env: Env, model: Any, name: str, variant: str) -> list[str]:
    import torch

    from longqa.config.recipe import KernelsConfig, MemoryConfig
    from longqa.ops.offload import ActivationOffloader
    from longqa.patch.kernels import apply_kernels

    flags = VARIANTS[variant]
    base = model.get_base_model()
    if flags.get("liger"):
        import liger_kernel.transformers as lk

        fn = getattr(lk, f"apply_liger_kernel_to_{SHAPES[name]['family']}")
        # Liger's RMSNorm and SwiGLU kernels fail in the Triton interpreter: the dry run omits them
        full = not env.dry_run
        fn(rope=True, rms_norm=full, swiglu=full, fused_linear_cross_entropy=True, model=base)
        what = "RoPE, RMSNorm, SwiGLU" if full else "RoPE (dry run: no RMSNorm, SwiGLU)"
        return [f"Liger: {what}, fused linear cross-entropy"]
    if flags.get("hf"):
        return []
    kernels = KernelsConfig(
        rope=flags.get("rope", False), chunked_ce=flags.get("ce", False),
        tiled_mlp=flags.get("tiled", False), tiled_mlp_tile=8 if env.dry_run else 0,
        tiled_mlp_norm=flags.get("norm", False), lean_rmsnorm=flags.get("lean", False),
        lean_lora_dropout=flags.get("dropout", False),
    )  # fmt: skip
    offloader = ActivationOffloader(simulate=env.dry_run, min_bytes=0 if env.dry_run else 1 << 20)
    memory = MemoryConfig(offload_activations=flags.get("offload", False),
                          bf16_residual=flags.get("bf16", False))  # fmt: skip
    dtype = torch.float32 if env.dry_run else torch.bfloat16  # the dry run skips bf16 residual
    return apply_kernels(base, kernels, memory, force_triton=env.dry_run, offloader=offloader,
                         compute_dtype=dtype)  # fmt: skip


def loss_chunk(variant: str, vocab: int) -> int:
    from longqa.ops.causal_lm import loss_chunk_from_memory

    return loss_chunk_from_memory(vocab) if VARIANTS[variant].get("auto_chunk") else 4096


def step(env: Env, model: Any, variant: str, seq: int) -> tuple[float, float]:
    """(peak GiB, seconds) of one forward + backward of ``seq`` tokens; raises on OOM."""
    import torch

    from longqa.ops.causal_lm import causal_lm_loss

    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (1, seq), device=env.device)
    if env.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    env.sync()
    start = time.perf_counter()
    with torch.autocast(env.device, dtype=torch.bfloat16, enabled=not env.dry_run):
        if VARIANTS[variant].get("ce"):
            total, n = causal_lm_loss(
                model, {"input_ids": ids, "labels": ids}, chunk_size=loss_chunk(variant, vocab)
            )
            loss = total / n
        else:
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    env.sync()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    del loss
    peak = torch.cuda.max_memory_allocated() / 2**30 if env.device == "cuda" else float("nan")
    return peak, elapsed


def try_step(env: Env, model: Any, variant: str, seq: int) -> tuple[float, float] | None:
    """:func:`step`, or None on out-of-memory (other errors propagate)."""
    import torch

    try:
        return step(env, model, variant, seq)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        gc.collect()
        if env.device == "cuda":
            torch.cuda.empty_cache()
        return None


def model_shape(name: str) -> Any:
    """The planner's :class:`~longqa.plan.memory.ModelShape` of a benchmark model."""
    from longqa.plan.memory import ModelShape

    s = SHAPES[name]
    return ModelShape(hidden=s["hidden_size"], layers=s["num_hidden_layers"],
                      heads=s["num_attention_heads"], kv_heads=s["num_key_value_heads"],
                      inter=s["intermediate_size"], vocab=s["vocab_size"])  # fmt: skip


def plan_overrides(variant: str) -> list[str]:
    """The recipe settings that make the planner model this variant's benchmark model."""
    flags = VARIANTS[variant]
    on = {k: str(bool(flags.get(k))).lower()
          for k in ("ce", "tiled", "offload", "lean", "norm", "dropout", "bf16")}  # fmt: skip
    return [
        "model.attn_implementation=sdpa", "lora.trainable_norms=false", "lora.dropout=0.1",
        f"kernels.chunked_ce={on['ce']}", f"kernels.tiled_mlp={on['tiled']}",
        f"kernels.lean_rmsnorm={on['lean']}", f"kernels.tiled_mlp_norm={on['norm']}",
        f"kernels.lean_lora_dropout={on['dropout']}",
        f"memory.offload_activations={on['offload']}", f"memory.bf16_residual={on['bf16']}",
        f"train.loss_chunk_size={0 if flags.get('auto_chunk') else 4096}",
    ]  # fmt: skip


def planned_gib(name: str, variant: str, seq: int, env: Env) -> float | None:
    """The planner's peak for this cell, without its CUDA-context + slack item (GiB)."""
    from longqa.config.recipe import load_recipe
    from longqa.plan.memory import GB, estimate_bytes

    if VARIANTS[variant].get("liger"):
        return None
    overrides = [
        "model.dtype=" + ("float32" if env.dry_run else "bfloat16"),
        "model.quantization=" + ("none" if env.dry_run else "nf4"),
        "lora.r=16", "train.micro_batch_size=1", "train.gradient_checkpointing=true",
        *plan_overrides(variant),
    ]  # fmt: skip
    items = estimate_bytes(load_recipe(SHAPES[name]["recipe"], overrides), model_shape(name), seq)
    items.pop("CUDA context + slack", None)
    return sum(items.values()) / GB


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _cell_text(rec: dict[str, Any]) -> str:
    if rec.get("skipped"):
        return rec["skipped"]
    if rec.get("oom"):
        return "OOM"
    mem = "" if rec["peak_gib"] != rec["peak_gib"] else f"{rec['peak_gib']:.1f} GiB, "
    plan = rec.get("plan_gib")
    err = ""
    if plan is not None and rec["peak_gib"] == rec["peak_gib"] and rec["peak_gib"] > 0:
        err = f" (plan {plan:.1f}, {100 * (plan - rec['peak_gib']) / rec['peak_gib']:+.0f}%)"
    return f"{mem}{rec['tok_s']:,.0f} tok/s{err}"


def write_train_md(out: Path, records: list[dict[str, Any]], lengths: list[int], env: Env) -> None:
    parts = []
    for name in dict.fromkeys(r["model"] for r in records):
        rows = []
        for variant in dict.fromkeys(r["variant"] for r in records if r["model"] == name):
            cells = {r["seq"]: r for r in records if r["model"] == name and r["variant"] == variant}
            rows.append([variant, *(_cell_text(cells[n]) if n in cells else "" for n in lengths)])
        what = "float32, no 4-bit (dry run: not measurements)" if env.dry_run else "NF4 + LoRA r16"
        head = ["variant", *(f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths)]
        parts.append(f"### Training step, {name}, {what}, batch 1\n\n" + table(head, rows))
    (out / "train.md").write_text("\n\n".join(parts) + "\n")


def run_train_stage(env: Env, out: Path, models: list[str], lengths: list[int],
                    variants: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Measure every (model, variant, length) cell in priority order within ``env.deadline``."""
    records: list[dict[str, Any]] = []
    has_liger = liger_available()
    jsonl = out / "train.jsonl"
    first: dict[str, float] = {}  # seconds of a step at the first length, per model
    order = [v for v in VARIANTS if v in variants and v != "transformers+Liger"]
    if "transformers+Liger" in variants:
        order.append("transformers+Liger")  # Liger patches classes for good: last
    for name in models:
        model = build_model(env, name)
        for variant in order:
            if variant == "transformers+Liger" and not has_liger:
                print(f"[{name}] Liger-Kernel not importable here: its column is skipped")
                continue
            notes = apply_variant(env, model, name, variant)
            print(f"[{name} / {variant}] " + "; ".join(notes), flush=True)
            last: tuple[int, float] | None = None
            for i, seq in enumerate(lengths):
                rec: dict[str, Any] = {"model": name, "variant": variant, "seq": seq}
                guess = last[1] * (seq / last[0]) ** 2 if last else 2 * first.get(name, 0.0)
                if env.left < max(guess, 1.0):
                    rec["skipped"] = "skipped (time box)"
                else:
                    try:
                        if i == 0 and not env.dry_run:
                            try_step(env, model, variant, seq)  # warm-up: Triton compile, allocator
                        res = try_step(env, model, variant, seq)
                    except Exception as e:  # a failing variant must not end the stage
                        rec["skipped"] = f"failed: {type(e).__name__}: {str(e)[:80]}"
                        res = False
                    if res is False:
                        pass
                    elif res is None:
                        rec["oom"] = True
                    else:
                        rec.update(peak_gib=res[0], seconds=res[1], tok_s=seq / res[1])
                        rec["plan_gib"] = planned_gib(name, variant, seq, env)
                        last = (seq, res[1])
                        if i == 0:
                            first[name] = max(first.get(name, 0.0), res[1])
                records.append(rec)
                with jsonl.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                write_train_md(out, records, lengths, env)
                if rec.get("oom") or str(rec.get("skipped", "")).startswith("failed"):
                    break
            from longqa.patch.kernels import revert_kernels

            revert_kernels(model.get_base_model())
        del model
        gc.collect()
    return records
