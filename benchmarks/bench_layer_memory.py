"""Measured working set of one checkpointed decoder layer's recompute + backward, per token.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_layer_memory.py \
        [--recipe llama3-8b-abf128k] [--shape llama-3-8b] [--tokens 256 512 1024] [--tile 128]

What the memory planner (:mod:`longqa.train.plan`) calls "layer recompute" is what one decoder layer
holds on top of the stored checkpoints while gradient checkpointing recomputes it and back-propagates
through it. This script builds ONE decoder layer of the real shape (``LlamaForCausalLM`` with one
layer from a ``LlamaConfig``; random weights) the way ``build_trainable_model`` prepares the model
for QLoRA training on a GPU:

* base linears are bitsandbytes ``Linear4bit`` NF4 with bf16 compute (bitsandbytes runs 4-bit on CPU
  too; like on the GPU it returns its output in the *input's* dtype), then peft's
  ``prepare_model_for_kbit_training`` (norms and embeddings to fp32, so the residual stream and the
  rotary cos/sin are fp32), LoRA from the recipe (rank, dropout, all linears, trainable norms as
  ``modules_to_save``), non-reentrant checkpointing (``activation_checkpointing_enable``);
* the step runs under ``torch.autocast(bfloat16)`` as the Trainer's ``bf16=True`` does on a GPU, with
  SDPA attention (its flash path on CPU saves q, k, v, out and a log-sum-exp, as flash-attn does);
* LoRA dropout runs as on CUDA (``native_dropout``, bool mask), not torch's CPU path (mask in the
  input dtype);
* peft's LoRA layers ask ``torch.is_autocast_enabled()`` (CUDA's flag) whether to cast their input
  to the adapter's fp32; here the question is answered with the CPU autocast state, as it is
  answered on a GPU (no fp32 copy of a bf16 input, e.g. ``o_proj``'s);
* the weight each 4-bit linear dequantises for its matmul (``[out, in]`` bf16, freed after it) is
  not counted: it does not grow with ``T``, and at these short lengths it would move the peak to
  where it is not at long ones;
* ``kernels.rope`` (on in the recipes): the fused Triton RoPE rotates q and k in place and saves only
  cos/sin; it needs CUDA, so here a stand-in with the same storage behaviour runs instead (rotation
  computed untracked and copied into q/k; backward allocates one gradient per input, as the kernel).

A ``TorchDispatchMode`` follows every storage created by an operator (weak references on the
storages: the entry goes when the storage is freed) and records the peak of their bytes, with the
live set at the peak (module or autograd node that made each one). Created *outside* the mode, and so
not counted: the weights, LoRA parameters, and the layer input ``x`` (the stored checkpoint, counted
by the planner separately). Counted: the rotary cos/sin, the incoming gradient ``dL/dy`` (one
``T × H`` tensor, as arrives from the layer above), everything recomputed and every gradient
temporary, and ``dL/dx`` leaving the layer. The layer output ``y`` is excluded (it is the next layer's
stored input). The peak is taken over forward and backward; the per-token coefficient is the slope of
the peak between the token counts (weight-sized temporaries, e.g. the dequantised bf16 weight of a
4-bit linear, are constant in ``T`` and drop out), and the script checks that the slope is constant
(linear growth) before reporting it.

Reported per token, in units of ``H · 2`` bytes (one bf16 hidden vector, the unit of the planner):
the layer with the sequence-tiled MLP (``kernels.tiled_mlp``: what remains is attention side, norms,
residual adds and the MLP's whole-length input and output gradients), the untiled MLP's extra in
units of ``I · 2``, and the tiled MLP's working set per tile token (slope over the tile size at fixed
``T``), in units of ``I · 2``. Results go to ``benchmarks/results/layer_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

RESULTS = Path(__file__).resolve().parent / "results"


class LiveStorageTracker(TorchDispatchMode):
    """Bytes of the storages created by operators while active (and still alive), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, str, str, tuple[int, ...], str]] = {}
        self.refs: dict[int, Any] = {}
        self.now = self.peak = 0
        self.at_peak: list[tuple[int, str, str, tuple[int, ...], str]] = []
        self.paused = False
        self.modules: list[str] = []

    def _free(self, key: int, _ref: Any) -> None:
        entry = self.live.pop(key, None)
        self.refs.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def forget(self, t: torch.Tensor) -> None:
        """Stop counting ``t``'s storage (e.g. the layer output: the next layer's stored input)."""
        key = t.untyped_storage().data_ptr()
        entry = self.live.pop(key, None)
        self.refs.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def _tag(self) -> str:
        node = torch._C._current_autograd_node()
        phase = "backward" if node is not None else "forward"
        if self.modules:
            return f"{'recompute' if node is not None else 'forward'}:{self.modules[-1]}"
        return f"{phase}:{node.name() if node is not None else '-'}"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        before = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        if self.paused:
            return out
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in self.live or key in before:
                continue  # empty, already counted, or a view of a tensor made before
            self.live[key] = (st.nbytes(), self._tag(), func.__name__, tuple(t.shape), str(t.dtype))
            self.refs[key] = weakref.ref(st, lambda r, k=key: self._free(k, r))
            self.now += st.nbytes()
            if self.now > self.peak:
                self.peak = self.now
                self.at_peak = list(self.live.values())
        return out

    @contextmanager
    def pause(self) -> Iterator[None]:
        old, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = old

    @contextmanager
    def module_names(self, model: torch.nn.Module) -> Iterator[None]:
        """Tag storages with the innermost running module (hooks on every submodule)."""
        names = {id(m): n for n, m in model.named_modules()}
        pre = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda m, a: self.modules.append(names.get(id(m), type(m).__name__))
        )

        def leave(m: torch.nn.Module, a: Any, o: Any) -> None:  # returns None: output unchanged
            if self.modules:
                self.modules.pop()

        post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def _rope_stand_in(tracker: LiveStorageTracker) -> Any:
    """``apply_rotary_pos_emb`` with the fused kernel's storage behaviour (in place, saves cos/sin)."""
    from transformers.models.llama.modeling_llama import rotate_half

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c, s = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
        return x.float() * c + rotate_half(x.float()) * s

    class InPlaceRope(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, cos, sin):  # noqa: ANN001, ANN205
            with tracker.pause():
                q.copy_(rotate(q, cos, sin))
                k.copy_(rotate(k, cos, sin))
            torch.autograd.graph.increment_version((q, k))
            ctx.save_for_backward(cos, sin)
            return q, k

        @staticmethod
        def backward(ctx, dq, dk):  # noqa: ANN001, ANN205
            cos, sin = ctx.saved_tensors
            dq_out, dk_out = torch.empty_like(dq), torch.empty_like(dk)
            with tracker.pause():
                dq_out.copy_(rotate(dq, cos, -sin))
                dk_out.copy_(rotate(dk, cos, -sin))
            return dq_out, dk_out, None, None

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):  # noqa: ANN001, ANN202
        return InPlaceRope.apply(q, k, cos, sin)

    return apply_rotary_pos_emb


def _cuda_like_dropout(input, p=0.5, training=True, inplace=False):  # noqa: ANN001, ANN202, A002
    """``F.dropout`` as on CUDA: the fused ``native_dropout`` (saves a bool mask, 1 B/element);
    torch's CPU path instead saves a mask in the input's dtype (4 B/element for fp32)."""
    if not training or p == 0:
        return input
    return torch.native_dropout(input, p, True)[0]


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


@contextmanager
def gpu_like(tracker: LiveStorageTracker, fused_rope: bool = True) -> Iterator[None]:
    """The stand-ins of the module docstring while active: fused-RoPE storage behaviour, CUDA's
    dropout, peft seeing autocast on, dequantised 4-bit weights not counted."""
    import bitsandbytes.functional as bnb_f
    import transformers.models.llama.modeling_llama as llama

    rope, dropout = llama.apply_rotary_pos_emb, torch.nn.functional.dropout
    dequantize, autocast_enabled = bnb_f.dequantize_4bit, torch.is_autocast_enabled

    def dequantize_4bit(*args: Any, **kwargs: Any) -> torch.Tensor:
        with tracker.pause():
            return dequantize(*args, **kwargs)

    if fused_rope:
        llama.apply_rotary_pos_emb = _rope_stand_in(tracker)
    torch.nn.functional.dropout = _cuda_like_dropout
    bnb_f.dequantize_4bit = dequantize_4bit
    torch.is_autocast_enabled = lambda *a: autocast_enabled(*a) if a else autocast_enabled("cpu")
    try:
        yield
    finally:
        llama.apply_rotary_pos_emb, torch.nn.functional.dropout = rope, dropout
        bnb_f.dequantize_4bit, torch.is_autocast_enabled = dequantize, autocast_enabled


def measure(model: Any, tokens: int, *, fused_rope: bool = True, seed: int = 0) -> dict[str, Any]:
    """Peak bytes over one checkpointed layer's forward + backward at ``tokens`` tokens."""
    lm = model.get_base_model()
    layer, rotary = lm.model.layers[0], lm.model.rotary_emb
    hidden = lm.config.hidden_size
    dtype = lm.model.embed_tokens.weight.dtype  # residual stream dtype (fp32 after prepare)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, hidden, generator=g).to(dtype).requires_grad_(True)
    tracker = LiveStorageTracker()
    start = time.perf_counter()
    with gpu_like(tracker, fused_rope), tracker, tracker.module_names(lm):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pos = torch.arange(tokens).unsqueeze(0)
            cos, sin = rotary(x, pos)
            y = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
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


MODES = {  # name: (kernels.tiled_mlp, kernels.lean_rmsnorm)
    "untiled": (False, False),
    "tiled": (True, False),
    "untiled, lean RMSNorm": (False, True),
    "tiled, lean RMSNorm": (True, True),
}


def layer_coefficients(recipe: Any, dims: dict[str, int], tokens: list[int], tile: int,
                       base: str = "nf4", fused_rope: bool = True) -> dict[str, Any]:  # fmt: skip
    """Measure the layer in each of :data:`MODES` at ``tokens``; per-token coefficients."""
    from longqa.patch.rmsnorm import apply_lean_rmsnorm, revert_lean_rmsnorm
    from longqa.patch.tiled_mlp import apply_tiled_mlp, revert_tiled_mlp

    h2, i2 = dims["hidden"] * 2, dims["inter"] * 2
    model = build_layer_model(recipe, dims, base)
    out: dict[str, Any] = {"dims": dims, "tokens": tokens, "tile": tile, "base": base}
    for mode, (tiled, lean) in MODES.items():
        revert_tiled_mlp(model)
        revert_lean_rmsnorm(model)
        if tiled:
            apply_tiled_mlp(model, tile)
        if lean:
            apply_lean_rmsnorm(model)
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
    # tiled MLP per tile token: the peak's slope over the tile size at the largest length
    revert_lean_rmsnorm(model)
    revert_tiled_mlp(model)
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


def _table(res: dict[str, Any], command: str) -> str:
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
    for name in MODES:
        r = res[name]
        peaks = " | ".join(f"{p / 2**20:.1f}" for p in r["peak_bytes"])
        s = ", ".join(f"{x:,.0f}" for x in r["slopes"])
        lines.append(f"| {name} | {peaks} | {s} | {r['per_token_h2']:.2f} × H·2 |")
    lines += [
        "",
        f"* layer with the tiled MLP: **{res['layer_tiled_h2']:.2f} × T·H·2** bytes",
        f"* untiled MLP on top: **{res['mlp_untiled_extra_i2']:.2f} × T·I·2** bytes",
        f"* tiled MLP per tile token: **{res['tile_per_token_i2']:.2f} × tile·I·2** bytes",
        f"* ``kernels.lean_rmsnorm`` removes **{res['lean_rmsnorm_saves_h2']:.2f} × T·H·2** bytes "
        f"(tiled layer: {t['per_token_h2']:.2f} → {lean['per_token_h2']:.2f}); every mode grows "
        f"linearly: {all(res[m]['linear'] for m in MODES)}",
        "",
        f"Largest storages live at the peak, tiled layer, T={res['tokens'][-1]:,} (× T·H·2):",
        "",
    ]
    lines += [f"    {v:6.2f}  {k}" for k, v in t["contributors_h2"]]
    lines += ["", f"Untiled layer, T={res['tokens'][-1]:,} (× T·H·2):", ""]
    lines += [f"    {v:6.2f}  {k}" for k, v in u["contributors_h2"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from longqa.config.recipe import load_recipe
    from longqa.train.plan import KNOWN_SHAPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llama3-8b-abf128k")
    p.add_argument("--shape", default="llama-3-8b", choices=sorted(KNOWN_SHAPES))
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--base", choices=("nf4", "bf16"), default="nf4")
    p.add_argument("--out", default=str(RESULTS / "layer_memory"))
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe = load_recipe(a.recipe)
    dims = {k: KNOWN_SHAPES[a.shape][k] for k in ("hidden", "inter", "heads", "kv_heads")}
    res = layer_coefficients(recipe, dims, sorted(a.tokens), a.tile, a.base, recipe.kernels.rope)
    command = "python benchmarks/bench_layer_memory.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = _table(res, command.strip())
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".md").write_text(text)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
