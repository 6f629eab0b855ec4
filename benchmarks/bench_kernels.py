"""Benchmark longqa's kernels and memory features on a CUDA GPU; prints Markdown tables.

Usage::

    python benchmarks/bench_kernels.py                     # everything (long: see the README)
    python benchmarks/bench_kernels.py --only rope         # RoPE kernel vs eager transformers
    python benchmarks/bench_kernels.py --only train --models llama3-8b --lengths 16384,32768
    python benchmarks/bench_kernels.py --dry-run           # CPU: tiny shapes, checks the script

1. RoPE: :func:`longqa.ops.rope_triton.fused_rope` vs transformers' eager ``apply_rotary_pos_emb``,
   forward + backward at (1, 32K tokens, 32 q / 8 kv heads, head_dim 128), bf16: time ratio and
   achieved bandwidth as a fraction of a measured device-to-device copy.
2. One training step (forward + backward, batch 1) of a random-initialised model with real shapes
   (Llama-3-8B, Qwen2.5-14B), NF4 4-bit base + LoRA r=16 on all projections, bf16, sdpa attention,
   non-reentrant gradient checkpointing: peak GPU memory and tokens/s for plain transformers + peft
   and for longqa with each feature on, then the longest length that fits (doubling, then bisecting).

Without CUDA it exits with status 2 unless ``--dry-run`` (tiny model, float32, no 4-bit: the numbers
it prints are not measurements).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

MODELS = {  # real shapes (public configs); weights are random
    "llama3-8b": dict(
        family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
    ),
    "qwen2.5-14b": dict(
        family="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, rope_theta=1000000.0,
    ),
    "tiny": dict(
        family="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=128, rope_theta=10000.0,
    ),
}  # fmt: skip
VARIANTS = {  # name -> (kernels.rope, kernels.chunked_ce, memory.offload_activations)
    "transformers+peft": None,
    "longqa chunked CE": (False, True, False),
    "longqa fused RoPE": (True, False, False),
    "longqa offload": (False, False, True),
    "longqa all": (True, True, True),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Env:
    device: str
    dry_run: bool

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def timed(env: Env, fn: Callable[[], object], repeat: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in seconds (synchronised)."""
    for _ in range(warmup):
        fn()
    env.sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        env.sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- 1. RoPE ----------------------------------------------------------------------------------------
def bench_rope(env: Env, seq: int, n_q: int, n_kv: int, head_dim: int) -> str:
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from longqa.ops.rope_triton import fused_rope

    dev = env.device
    dtype = torch.float32 if env.dry_run else torch.bfloat16
    q = torch.randn(1, seq, n_q, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    k = torch.randn(1, seq, n_kv, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    q.requires_grad_(True)
    k.requires_grad_(True)
    q_in, k_in = q * 1, k * 1  # non-leaf, like projection outputs: the fused op rotates in place
    inv = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=dev).float() / head_dim))
    emb = torch.arange(seq, device=dev).float()[:, None] * inv
    emb = torch.cat([emb, emb], dim=-1)[None]  # [1, S, D]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    gq, gk = torch.randn_like(q), torch.randn_like(k)

    def eager() -> None:
        qo, ko = apply_rotary_pos_emb(q, k, cos, sin)
        torch.autograd.grad([qo, ko], [q, k], [gq, gk])

    def fused() -> None:
        qo, ko = fused_rope(q_in, k_in, cos, sin)
        torch.autograd.grad([qo, ko], [q_in, k_in], [gq, gk])

    def fused_forward() -> None:
        with torch.no_grad():
            fused_rope(q_in, k_in, cos, sin)

    reps = 1 if env.dry_run else 20
    t_eager = timed(env, eager, repeat=reps, warmup=1)
    t_fused = timed(env, fused, repeat=reps, warmup=1)
    t_fwd = timed(env, fused_forward, repeat=reps, warmup=1)
    qk_bytes = (q.numel() + k.numel()) * q.element_size()
    cs_bytes = 2 * seq * (head_dim // 2) * cos.element_size()
    one_pass = 2 * qk_bytes + cs_bytes  # least traffic of one rotation: read q, k, cos, sin; write
    n_copy = max(1 << 20, 64 * qk_bytes // q.element_size())
    src = torch.empty(n_copy, device=dev, dtype=dtype)
    dst = torch.empty_like(src)
    t_copy = timed(env, lambda: dst.copy_(src), repeat=reps, warmup=1)
    copy_bw = 2 * src.numel() * src.element_size() / t_copy

    def row(what: str, t: float, nbytes: float, ratio: str) -> list[object]:
        bw = nbytes / t
        return [what, f"{t * 1e3:.3f}", ratio, f"{bw / 1e9:.1f}", f"{bw / copy_bw:.2f}"]

    rows = [
        row("eager transformers fwd+bwd", t_eager, 2 * one_pass, "1.00"),
        row("longqa fused fwd+bwd", t_fused, 2 * one_pass, f"{t_eager / t_fused:.2f}"),
        row("longqa fused fwd (kernel)", t_fwd, one_pass, ""),
        row("device-to-device copy", t_copy, 2 * src.numel() * src.element_size(), ""),
    ]
    title = f"RoPE (1, {seq}, {n_q}/{n_kv} heads, {head_dim}), {str(dtype).split('.')[-1]}"
    headers = ["what", "ms", "speed-up vs eager", "effective GB/s", "fraction of copy GB/s"]
    return f"### {title}\n\n" + table(headers, rows)


# -- 2. training step ---------------------------------------------------------------------------------
def build_model(env: Env, name: str):  # noqa: ANN201
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from longqa.models.load import peft_wrapping

    spec = dict(MODELS[name])
    family = spec.pop("family")
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[family]
    config = config_cls(**spec, max_position_embeddings=1 << 20, attn_implementation="sdpa")
    dtype = torch.float32 if env.dry_run else torch.bfloat16
    with torch.device(env.device):
        model = model_cls(config).to(dtype)
    if not env.dry_run:
        quantize_4bit(model, dtype)
    model.requires_grad_(False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with peft_wrapping():
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
    return model.train()


def quantize_4bit(model, compute_dtype) -> None:  # noqa: ANN001
    """Swap every decoder ``nn.Linear`` for a bitsandbytes NF4 ``Linear4bit`` (lm_head stays)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    for module in list(model.model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=compute_dtype, quant_type="nf4", device="meta",
            )  # fmt: skip
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, q.to(child.weight.device))
            del child
    gc.collect()
    torch.cuda.empty_cache()


def train_step(env: Env, model, seq: int, loss_path: str) -> tuple[float, float]:  # noqa: ANN001
    """(peak GiB, tokens/s) of one forward+backward at ``seq`` tokens; raises on OOM.

    ``loss_path``: ``"transformers"`` (the model's own loss, the baseline) or training's loss
    :func:`longqa.ops.causal_lm.causal_lm_loss` with ``"chunked"`` / ``"full"`` cross-entropy."""
    import torch

    from longqa.ops.causal_lm import causal_lm_loss, unwrap_causal_lm

    vocab = unwrap_causal_lm(model).config.vocab_size
    ids = torch.randint(0, vocab, (1, seq), device=env.device)
    if env.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    env.sync()
    start = time.perf_counter()
    if loss_path == "transformers":
        loss = model(input_ids=ids, labels=ids).loss
    else:
        total, n = causal_lm_loss(
            model, {"input_ids": ids, "labels": ids}, chunked=loss_path == "chunked"
        )
        loss = total / n
    loss.backward()
    env.sync()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if env.device == "cuda" else float("nan")
    return peak, seq / elapsed


def try_step(env: Env, model, seq: int, loss_path: str) -> tuple[float, float] | None:  # noqa: ANN001
    import torch

    try:
        train_step(env, model, seq, loss_path)  # warm-up (Triton compile, allocator)
        return train_step(env, model, seq, loss_path)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        gc.collect()
        if env.device == "cuda":
            torch.cuda.empty_cache()
        return None


def find_longest(fits: Callable[[int], bool], start: int, resolution: int, cap: int) -> int:
    """Largest multiple of ``resolution`` with ``fits`` true: double from ``start``, then bisect.

    Returns 0 when even ``start`` does not fit. Assumes ``fits`` is monotone.
    """
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None:
        nxt = good * 2
        if nxt > cap:
            return good
        if fits(nxt):
            good = nxt
        else:
            bad = nxt
    while bad - good > resolution:
        mid = (good + bad) // 2 // resolution * resolution
        if mid <= good:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def bench_train(env: Env, name: str, lengths: list[int], variants: list[str], search: list[str],
                resolution: int, cap: int) -> str:  # fmt: skip
    from longqa.config.recipe import KernelsConfig, MemoryConfig
    from longqa.ops.offload import ActivationOffloader
    from longqa.patch.kernels import apply_kernels, revert_kernels

    model = build_model(env, name)
    rows = []
    for variant in variants:
        flags = VARIANTS[variant]
        loss_path = "transformers" if not flags else ("chunked" if flags[1] else "full")
        if flags:
            offloader = ActivationOffloader(
                simulate=env.dry_run, min_bytes=0 if env.dry_run else 1 << 20
            )
            notes = apply_kernels(
                model,
                KernelsConfig(rope=flags[0], chunked_ce=flags[1]),
                MemoryConfig(offload_activations=flags[2]),
                force_triton=env.dry_run,
                offloader=offloader,
            )
            print(f"[{name} / {variant}] " + "; ".join(notes), file=sys.stderr)
        cells = []
        for seq in lengths:
            res = try_step(env, model, seq, loss_path)
            if res is None:
                cells.append("OOM")
            elif env.dry_run:
                cells.append(f"{res[1]:,.0f} tok/s")
            else:
                cells.append(f"{res[0]:.1f} GiB, {res[1]:,.0f} tok/s")
        longest = ""
        if variant in search:

            def fits(seq: int, model=model, loss_path: str = loss_path) -> bool:  # noqa: ANN001
                return try_step(env, model, seq, loss_path) is not None

            n = find_longest(fits, lengths[0], resolution, cap)
            longest = f"{n:,}" + (" (cap)" if n * 2 > cap else "")
        rows.append([variant, *cells, longest])
        revert_kernels(model)
    headers = ["variant", *(f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths), "longest"]
    title = f"Training step, {name}, 4-bit NF4 + LoRA r=16, batch 1"
    if env.dry_run:
        title = f"Training step, {name} (dry run: float32, no 4-bit, simulated offload)"
    del model
    gc.collect()
    return f"### {title}\n\n" + table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, no measurement")
    parser.add_argument("--only", choices=["rope", "train"], default=None)
    parser.add_argument("--models", default="llama3-8b,qwen2.5-14b")
    parser.add_argument("--lengths", default="16384,32768,65536,131072")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--search", default="transformers+peft,longqa all",
                        help="variants whose longest fitting length is searched ('' for none)")  # fmt: skip
    parser.add_argument("--resolution", type=int, default=4096, help="bisection step (tokens)")
    parser.add_argument("--cap", type=int, default=1 << 20, help="longest length tried")
    args = parser.parse_args(argv)

    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("bench_kernels needs a CUDA GPU (none found); run with --dry-run to check the "
              "script on CPU", file=sys.stderr)  # fmt: skip
        return 2
    env = Env(device="cpu" if args.dry_run else "cuda", dry_run=args.dry_run)
    variants = [v for v in args.variants.split(",") if v]
    search = [v for v in args.search.split(",") if v]
    if args.dry_run:
        models, lengths = ["tiny"], [16, 32]
        rope_shape = (16, 4, 2, 32)
        args.cap, args.resolution = 64, 16
        variants = [v for v in variants if v in ("transformers+peft", "longqa all")]
    else:
        models = [m for m in args.models.split(",") if m]
        lengths = [int(x) for x in args.lengths.split(",") if x]
        rope_shape = (32768, 32, 8, 128)
    unknown = [m for m in models if m not in MODELS] + [
        v for v in args.variants.split(",") if v and v not in VARIANTS
    ]
    if unknown:
        print(f"unknown model/variant {unknown}; models: {list(MODELS)}, variants: "
              f"{list(VARIANTS)}", file=sys.stderr)  # fmt: skip
        return 2
    device_name = torch.cuda.get_device_name() if env.device == "cuda" else "CPU (dry run)"
    print(f"## bench_kernels on {device_name}, torch {torch.__version__}\n")
    if args.only in (None, "rope"):
        print(bench_rope(env, *rope_shape) + "\n")
    if args.only in (None, "train"):
        for name in models:
            print(bench_train(env, name, lengths, variants, search, args.resolution, args.cap))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
