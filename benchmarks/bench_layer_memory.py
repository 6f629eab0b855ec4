"""Measured working set of one checkpointed decoder layer's recompute + backward, per token.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_layer_memory.py [--tokens 256 512 1024] [--tile 128]
    python benchmarks/bench_layer_memory.py --from-json benchmarks/results/layer_memory.json

What the memory planner (:mod:`longqa.plan.memory`) calls "layer recompute" is what one decoder layer
holds on top of the stored checkpoints while gradient checkpointing recomputes it and back-propagates
through it. This script builds ONE decoder layer of the real shape (``LlamaForCausalLM`` with one
layer from a ``LlamaConfig``; random weights) the way ``build_trainable_model`` prepares the model
for QLoRA training on a GPU: bitsandbytes NF4 ``Linear4bit`` base linears with bf16 compute (they
run on CPU too and, as on the GPU, return the *input's* dtype), peft's
``prepare_model_for_kbit_training`` (norms and embedding to fp32, so the residual stream and rotary
cos/sin are fp32), LoRA from the recipe (rank, dropout, all linears, trained norms), non-reentrant
checkpointing; the step runs under ``torch.autocast(bfloat16)`` as the Trainer's ``bf16=True`` does
on a GPU, with SDPA attention (its CPU flash path saves q, k, v, out and a log-sum-exp, as
flash-attn does). ``live_memory.gpu_like`` supplies what differs on CPU: the fused RoPE's storage
behaviour (``kernels.rope`` is on in the recipes), CUDA's bool dropout masks, peft's autocast check,
and the dequantised 4-bit weights left out (constant in ``T``).

``live_memory.LiveStorageTracker`` counts the storages operators create and records their peak with
the live set. Not counted (made outside it): weights, LoRA parameters and the layer input ``x`` (the
stored checkpoint, a planner term of its own). Counted: the rotary cos/sin, the incoming gradient
``dL/dy`` (one ``T × H`` tensor, as from the layer above), everything recomputed, every gradient
temporary and ``dL/dx``. The output ``y`` is excluded (the next layer's stored input). The peak is
taken over forward and backward; the per-token coefficient is the slope of the peak between the
token counts (constants drop out), checked to be constant (linear growth) at every step.

Each of :data:`MODES` (untiled / ``kernels.tiled_mlp``, with and without ``kernels.lean_rmsnorm``,
``kernels.tiled_mlp_norm`` and ``memory.bf16_residual``) is measured; at these lengths the peak is
the backward's, while at long ones the recompute's attention forward can bind (the planner's
``forward_bytes_per_token``, checked at a small shape by ``tests/test_plan_measured.py``). Reported per token, in ``H · 2`` bytes (one bf16 hidden vector): the layer with the
tiled MLP (attention side, norms, residual and the MLP's input and its gradient), the untiled MLP's
extra in ``I · 2`` bytes, a tile's working set per tile token (slope over the tile size at fixed
``T``), what the lean RMSNorm removes, the planner's items beside them, and the storages alive at the
peak, to ``results/layer_memory.{md,json}``; ``--modes`` measures a subset (``…_modes.{md,json}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_memory import LiveStorageTracker, gpu_like  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _to_nf4(model: torch.nn.Module) -> None:
    """Replace every decoder ``nn.Linear`` by a bitsandbytes NF4 ``Linear4bit`` (bf16 compute)."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                      compute_dtype=torch.bfloat16, quant_type="nf4",
                                      compress_statistics=True)  # fmt: skip
                q.weight = bnb.nn.Params4bit(
                    child.weight.data.to(torch.bfloat16),
                    requires_grad=False,
                    quant_type="nf4",
                    compress_statistics=True,
                )
                q = q.to("cpu")
                q.compute_type_is_set = True
                setattr(parent, name, q)


def build_layer_model(
    recipe: Any, dims: dict[str, int], base: str = "nf4", layers: int = 1, vocab: int = 256
) -> Any:
    """A ``layers``-layer ``LlamaForCausalLM`` of ``dims`` prepared for QLoRA training, with LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    from longqa.models.load import peft_wrapping
    from longqa.train.model import lora_config

    config = LlamaConfig(
        hidden_size=dims["hidden"], intermediate_size=dims["inter"], num_hidden_layers=layers,
        num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"], vocab_size=vocab,
        rope_theta=500000.0, attn_implementation="sdpa", use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    if base == "nf4":
        _to_nf4(model)
        model.is_loaded_in_4bit = True  # as from_pretrained(quantization_config=...) marks it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:  # bf16 base: prepare's fp32 upcast of what 4-bit training leaves unquantised
        for name, p in model.named_parameters():
            p.requires_grad_(False)
            if "proj" not in name:
                p.data = p.data.float()
    model.activation_checkpointing_enable({"use_reentrant": False})
    with peft_wrapping():
        model = get_peft_model(model, lora_config(recipe, model))
    model.train()
    return model


def layer_input(model: Any, tokens: int, g: torch.Generator) -> torch.Tensor:
    """The first layer's stored input ``x [1, T, H]`` in the residual stream's dtype (fp32 after
    peft's prepare, bf16 with the bf16 stream), requiring grad."""
    lm = model.get_base_model()
    x = torch.randn(1, tokens, lm.config.hidden_size, generator=g)
    return x.to(lm.model.embed_tokens.weight.dtype).requires_grad_(True)


def layer_forward(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The first decoder layer on ``x`` under bf16 autocast (rotary cos/sin included), as the
    Trainer's ``bf16=True`` runs it."""
    lm = model.get_base_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pos = torch.arange(x.shape[1]).unsqueeze(0)
        cos, sin = lm.model.rotary_emb(x, pos)
        return lm.model.layers[0](
            x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin)
        )


def measure(model: Any, tokens: int, *, fused_rope: bool = True, seed: int = 0) -> dict[str, Any]:
    """Peak bytes over one checkpointed layer's forward + backward at ``tokens`` tokens."""
    g = torch.Generator().manual_seed(seed)
    x = layer_input(model, tokens, g)
    tracker = LiveStorageTracker()
    start = time.perf_counter()
    with gpu_like(tracker, fused_rope), tracker, tracker.module_names(model.get_base_model()):
        y = layer_forward(model, x)
        tracker.forget(y)
        dy = torch.randn(y.shape, generator=g, dtype=y.dtype)  # dL/dy from the layer above
        y.backward(dy)
        del dy, y
    return {
        "tokens": tokens,
        "peak_bytes": tracker.peak,
        "at_peak": tracker.at_peak,
        "seconds": time.perf_counter() - start,
        "grad_x_norm": float(x.grad.double().norm()),
    }


def contributors(at_peak: list[tuple], tokens: int, unit: float) -> list[tuple[str, float]]:
    """Storages live at the peak grouped by (where, op, dtype), in ``unit`` bytes per token."""
    groups: dict[str, float] = defaultdict(float)
    for nbytes, tag, op, shape, dtype in at_peak:
        where = tag.replace("base_model.model.model.layers.0.", "")
        groups[f"{where} {op} {dtype.replace('torch.', '')} {list(shape)[-1:]}"] += nbytes
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])
    return [(k, v / tokens / unit) for k, v in ranked]


def slopes(runs: list[dict[str, Any]]) -> list[float]:
    """Per-token bytes between consecutive token counts (equal when the peak grows linearly)."""
    return [
        (b["peak_bytes"] - a["peak_bytes"]) / (b["tokens"] - a["tokens"])
        for a, b in zip(runs, runs[1:], strict=False)
    ]


MODES = {  # name: (tiled_mlp, lean_rmsnorm, tiled_mlp_norm, bf16_residual, lean_lora_dropout)
    "untiled": (False, False, False, False, False),
    "tiled": (True, False, False, False, False),
    "untiled, lean RMSNorm": (False, True, False, False, False),
    "tiled, lean RMSNorm": (True, True, False, False, False),
    "tiled + norm inside, lean RMSNorm": (True, True, True, False, False),
    "tiled, lean RMSNorm, lean dropout": (True, True, False, False, True),
    "tiled + norm inside, lean RMSNorm, lean dropout": (True, True, True, False, True),
    "tiled, bf16 residual": (True, True, False, True, False),
    "tiled + norm inside, bf16 residual": (True, True, True, True, False),
    "tiled + norm inside, bf16 residual, lean dropout": (True, True, True, True, True),
}


def layer_coefficients(recipe: Any, dims: dict[str, int], tokens: list[int], tile: int,
                       base: str = "nf4", fused_rope: bool = True,
                       modes: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure the layer in each of ``modes`` (default :data:`MODES`) at ``tokens``; per-token
    coefficients, and the derived ones when the modes they need were measured."""
    import longqa.ops.lora_dropout as lora_dropout
    import longqa.ops.rmsnorm as rmsnorm
    from longqa.patch.lora_dropout import apply_lean_lora_dropout, revert_lean_lora_dropout
    from longqa.patch.residual import apply_bf16_residual, revert_bf16_residual
    from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

    h2, i2 = dims["hidden"] * 2, dims["inter"] * 2
    model = build_layer_model(recipe, dims, base)
    out: dict[str, Any] = {"dims": dims, "tokens": tokens, "tile": tile, "base": base}
    # the lean norm runs over 2,048-token pieces; at these lengths, pieces as many as at ~32K
    rmsnorm.BACKWARD_CHUNK = lora_dropout.CHUNK = max(16, min(tokens) // 16)
    for mode in modes or list(MODES):
        tiled, lean, norm, bf16, drop = MODES[mode]
        revert_lean_lora_dropout(model)
        revert_tiled_mlp(model)  # the reverse order of apply_kernels
        revert_bf16_residual(model)
        revert_lean_rmsnorm(model)
        if lean:
            apply_lean_rmsnorm(model)
        if bf16:
            apply_bf16_residual(model, torch.bfloat16)
        if tiled:
            apply_tiled_mlp(model, tile, with_norm=norm)
        if drop:
            apply_lean_lora_dropout(model)
        runs = []
        for t in tokens:
            runs.append(measure(model, t, fused_rope=fused_rope))
            print(f"{mode} T={t}: {runs[-1]['peak_bytes'] / 2**20:.1f} MB, "
                  f"{runs[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        s = slopes(runs)
        out[mode] = {
            "peak_bytes": [r["peak_bytes"] for r in runs],
            "seconds": [round(r["seconds"], 2) for r in runs],
            "slopes": s,
            "per_token_h2": s[-1] / h2,
            "linear": max(s) - min(s) <= 0.02 * max(s),
            "grad_x_norm": runs[-1]["grad_x_norm"],
            "contributors_h2": contributors(runs[-1]["at_peak"], tokens[-1], h2)[:16],
        }
    revert_lean_lora_dropout(model)
    revert_tiled_mlp(model)
    if not {"untiled", "tiled", "tiled, lean RMSNorm"} <= out.keys():
        return out
    # tiled MLP per tile token: the peak's slope over the tile size at the largest length
    revert_bf16_residual(model)
    revert_lean_rmsnorm(model)
    apply_tiled_mlp(model, 2 * tile)
    big = measure(model, tokens[-1], fused_rope=fused_rope)
    revert_tiled_mlp(model)
    small = out["tiled"]["peak_bytes"][-1]
    out["tile_per_token_i2"] = (big["peak_bytes"] - small) / tile / i2
    out["mlp_untiled_extra_i2"] = (out["untiled"]["slopes"][-1] - out["tiled"]["slopes"][-1]) / i2
    out["layer_tiled_h2"] = out["tiled"]["per_token_h2"]
    out["lean_rmsnorm_saves_h2"] = (
        out["tiled"]["slopes"][-1] - out["tiled, lean RMSNorm"]["slopes"][-1]
    ) / h2
    return out


def mode_overrides(mode: str) -> list[str]:
    """The recipe settings of a :data:`MODES` entry, for the planner."""
    tiled, lean, norm, bf16, drop = (str(v).lower() for v in MODES[mode])
    return [f"kernels.tiled_mlp={tiled}", f"kernels.lean_rmsnorm={lean}",
            f"kernels.tiled_mlp_norm={norm}", f"memory.bf16_residual={bf16}",
            f"kernels.lean_lora_dropout={drop}"]  # fmt: skip


def modes_table(res: dict[str, Any], recipe_name: str, command: str) -> str:
    """Each mode's measured slope beside the planner's backward items and attention peak."""
    from longqa.config.recipe import load_recipe
    from longqa.plan.memory import ModelShape, layer_bytes_per_token
    from longqa.plan.terms import attention_backward_bytes_per_token as backward_attn
    from longqa.plan.terms import forward_bytes_per_token as forward_attn

    d = res["dims"]
    shape = ModelShape(hidden=d["hidden"], layers=1, heads=d["heads"], kv_heads=d["kv_heads"],
                       inter=d["inter"], vocab=256)  # fmt: skip
    h2 = d["hidden"] * 2
    lines = [f"## Layer working set per mode (hidden {d['hidden']}, intermediate {d['inter']}, "
             f"{d['heads']}/{d['kv_heads']} heads)", "", f"Command: `{command}`", "",
             "| mode | " + " | ".join(f"peak at T={n:,} (MB)" for n in res["tokens"])
             + " | measured | planned: backward | attention peak |",
             "|---|" + "---|" * len(res["tokens"]) + "---|---|---|"]  # fmt: skip
    for mode in [m for m in MODES if m in res]:
        r = res[mode]
        plan = load_recipe(recipe_name, mode_overrides(mode))
        planned = sum(layer_bytes_per_token(plan, shape).values()) / h2 if MODES[mode][0] else None
        attn = max(sum(f(plan, shape).values()) for f in (forward_attn, backward_attn)) / h2
        peaks = " | ".join(f"{p / 2**20:.1f}" for p in r["peak_bytes"])
        lines.append(f"| {mode} | {peaks} | {r['per_token_h2']:.2f} × H·2 | {_num(planned)} × H·2 "
                     f"| {attn:.2f} × H·2 |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def planner_comparison(res: dict[str, Any], recipe: Any) -> list[str]:
    """The planner's itemised terms at the measured shape beside the measurement (× H·2 / I·2)."""
    from longqa.plan.memory import (
        TILED_MLP_EXTRA,
        ModelShape,
        layer_bytes_per_token,
        mlp_bytes_per_token,
    )

    d = res["dims"]
    shape = ModelShape(hidden=d["hidden"], layers=1, heads=d["heads"], kv_heads=d["kv_heads"],
                       inter=d["inter"], vocab=256)  # fmt: skip
    h2, i2 = d["hidden"] * 2, d["inter"] * 2
    layer = layer_bytes_per_token(recipe, shape)
    mlp = sum(mlp_bytes_per_token(recipe, shape).values())
    lines = ["| planner item (`longqa/plan/memory.py`) | per token |", "|---|---|"]
    lines += [f"| {k} | {v / h2:.2f} × H·2 |" for k, v in layer.items()]
    lines += [
        f"| **layer, planned / measured** | **{sum(layer.values()) / h2:.2f} / "
        f"{res['layer_tiled_h2']:.2f} × H·2** |",
        f"| **untiled MLP, planned / measured** | **{mlp / i2:.2f} / "
        f"{res['mlp_untiled_extra_i2']:.2f} × I·2** |",
        f"| **tiled MLP per tile token, planned / measured** | **"
        f"{mlp * (1 + TILED_MLP_EXTRA) / i2:.2f} / {_num(res['tile_per_token_i2'])} × I·2** |",
    ]
    return lines


def _table(res: dict[str, Any], command: str, recipe: Any = None) -> str:
    d = res["dims"]
    u, t = res["untiled"], res["tiled"]
    lean = res["tiled, lean RMSNorm"]
    lines = [
        f"## One decoder layer's recompute working set, measured (hidden {d['hidden']}, "
        f"intermediate {d['inter']}, {d['heads']}/{d['kv_heads']} heads)",
        "",
        f"Command: `{command}`  ",
        f"Base weights {res['base']}, LoRA from the recipe, fp32 norms/residual (QLoRA preparation), "
        "bf16 autocast, SDPA, fused-RoPE storage stand-in, non-reentrant checkpointing; peak of live "
        "operator-made storages over forward + backward of one layer (weights and the stored input "
        f"excluded); tiled = {res['tile']}-token MLP tiles. Per token, in bf16 hidden vectors "
        "(H·2 bytes) or intermediate vectors (I·2).",
        "",
        "| layer | " + " | ".join(f"peak at T={n:,} (MB)" for n in res["tokens"])
        + " | slopes (B/token) | per token |",
        "|---|" + "---|" * len(res["tokens"]) + "---|---|",
    ]  # fmt: skip
    for name in [m for m in MODES if m in res]:  # results saved before a mode existed lack it
        r = res[name]
        peaks = " | ".join(f"{p / 2**20:.1f}" for p in r["peak_bytes"])
        s = ", ".join(f"{x:,.0f}" for x in r["slopes"])
        lines.append(f"| {name} | {peaks} | {s} | {r['per_token_h2']:.2f} × H·2 |")
    lines += [
        "",
        f"* layer with the tiled MLP: **{res['layer_tiled_h2']:.2f} × T·H·2** bytes",
        f"* untiled MLP on top: **{res['mlp_untiled_extra_i2']:.2f} × T·I·2** bytes",
        f"* tiled MLP per tile token: **{_num(res['tile_per_token_i2'])} × tile·I·2** bytes",
        f"* ``kernels.lean_rmsnorm`` removes **{res['lean_rmsnorm_saves_h2']:.2f} × T·H·2** bytes "
        f"(tiled layer: {t['per_token_h2']:.2f} → {lean['per_token_h2']:.2f}); every mode grows "
        f"linearly: {all(res[m]['linear'] for m in MODES if m in res)}",
        "",
    ]
    if recipe is not None:
        lines += [*planner_comparison(res, recipe), ""]
    lines += [
        f"Largest storages live at the peak, tiled layer, T={res['tokens'][-1]:,} (× T·H·2):",
        "",
    ]
    lines += [f"    {v:6.2f}  {k}" for k, v in t["contributors_h2"]]
    lines += ["", f"Untiled layer, T={res['tokens'][-1]:,} (× T·H·2):", ""]
    lines += [f"    {v:6.2f}  {k}" for k, v in u["contributors_h2"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from longqa.config.recipe import load_recipe
    from longqa.plan.memory import KNOWN_SHAPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llama3-8b-abf128k")
    p.add_argument("--shape", default="llama-3-8b", choices=sorted(KNOWN_SHAPES))
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--base", choices=("nf4", "bf16"), default="nf4")
    p.add_argument("--out", default=str(RESULTS / "layer_memory"))
    p.add_argument("--from-json", default=None, help="re-render the tables of a saved result")
    p.add_argument("--modes", default="", help="MODES to measure, separated by ; (own table)")
    a = p.parse_args(argv)
    recipe = load_recipe(a.recipe)
    dims = {k: KNOWN_SHAPES[a.shape][k] for k in ("hidden", "inter", "heads", "kv_heads")}
    if a.modes:
        modes = [m.strip() for m in a.modes.split(";") if m.strip()]
        if unknown := [m for m in modes if m not in MODES]:
            p.error(f"unknown mode(s) {unknown}; known: {list(MODES)}")
        res = layer_coefficients(recipe, dims, sorted(a.tokens), a.tile, a.base,
                                 recipe.kernels.rope, modes)  # fmt: skip
        command = (f"python benchmarks/bench_layer_memory.py --recipe {a.recipe} --shape {a.shape}"
                   f" --tokens {' '.join(map(str, res['tokens']))} --tile {res['tile']}"
                   + (f" --out {a.out}" if a.out != p.get_default("out") else "")
                   + f' --modes "{a.modes}"')  # fmt: skip
        text = modes_table(res, a.recipe, command)
        print(text)
        Path(a.out + "_modes.md").write_text(text)
        Path(a.out + "_modes.json").write_text(json.dumps(res, indent=1) + "\n")
        return 0
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
    else:
        res = layer_coefficients(recipe, dims, sorted(a.tokens), a.tile, a.base,
                                 recipe.kernels.rope)  # fmt: skip
    command = (f"python benchmarks/bench_layer_memory.py --recipe {a.recipe} --tokens "
               f"{' '.join(map(str, res['tokens']))} --tile {res['tile']} --base {res['base']}")  # fmt: skip
    text = _table(res, command, recipe)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
