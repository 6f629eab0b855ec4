"""Model setup for QLoRA training: load (4-bit NF4), RoPE scaling, kernels, LoRA, checkpointing.

Usage::

    from longqa.train.model import runtime_for, build_trainable_model
    rt = runtime_for(recipe)                       # device, dtype, quantization, optimizer + notices
    model, notes = build_trainable_model(recipe, rt, start_adapter=None)

QLoRA (https://arxiv.org/abs/2305.14314): frozen 4-bit NF4 base, LoRA on every linear layer. As in
the paraphrasing paper (https://arxiv.org/abs/2312.11193) the norm layers are trained too; they are
peft ``modules_to_save`` so they travel inside the adapter file. Gradient checkpointing is on
(non-reentrant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longqa.config.recipe import Recipe, returns_freed_memory
from longqa.train.cpu_memory import huge_pages_active, release_freed_memory_on_cpu
from longqa.train.distributed import device_for_rank, weights_sharded


@dataclass
class Runtime:
    """Where and how this run trains, after adapting the recipe to the machine."""

    device: str
    dtype: str
    quantization: str
    optim: str
    notices: list[str] = field(default_factory=list)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")


def runtime_for(recipe: Recipe, device: str | None = None) -> Runtime:
    """Adapt the recipe to this machine: on CPU train in float32 with a torch optimizer."""
    import torch

    dev = device or device_for_rank(torch.cuda.is_available())  # cuda:LOCAL_RANK under DDP
    rt = Runtime(dev, recipe.model.dtype, recipe.model.quantization, recipe.train.optim)
    if rt.on_cuda:
        if rt.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            rt.dtype = "float16"
            rt.notices.append("GPU lacks bfloat16: training in float16")
        return rt
    if rt.dtype != "float32":
        rt.notices.append(f"CPU: training in float32 instead of {rt.dtype}")
        rt.dtype = "float32"
    if returns_freed_memory(recipe) and release_freed_memory_on_cpu():
        pages = "2 MiB pages" if huge_pages_active() else "4 KiB pages, see longqa.train.cpu_memory"
        rt.notices.append(f"CPU: freed activation memory is returned to the OS ({pages})")
    if "8bit" in rt.optim or "paged" in rt.optim:
        rt.notices.append(f"CPU: optimizer {rt.optim} needs CUDA; using adamw_torch")
        rt.optim = "adamw_torch"
    return rt


def norm_module_names(model: Any) -> list[str]:
    """Distinct leaf names of normalisation modules (``input_layernorm``, ``norm``, …)."""
    names = set()
    for name, module in model.named_modules():
        cls = type(module).__name__
        if name and ("Norm" in cls and "Embedding" not in cls):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_config(recipe: Recipe, model: Any) -> Any:
    """peft ``LoraConfig`` from the recipe (all linear layers unless a list is given)."""
    from peft import LoraConfig, TaskType

    lc = recipe.lora
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.target_modules,
        modules_to_save=norm_module_names(model) if lc.trainable_norms else None,
        task_type=TaskType.CAUSAL_LM,
        bias="none",
    )


def load_base(recipe: Recipe, rt: Runtime) -> tuple[Any, list[str]]:
    """The base model in 4-bit (or not), with the recipe's RoPE scaling applied."""
    import torch

    from longqa.models.load import load_from_config

    notes: list[str] = []
    model, _, spec = load_from_config(
        recipe.model,
        rope=recipe.rope,
        dtype=rt.dtype,
        quantization=rt.quantization,
        device=rt.device if rt.quantization == "nf4" or rt.on_cuda else None,
        quant_storage=rt.dtype if weights_sharded() and rt.quantization == "nf4" else None,
    )
    model.config.use_cache = False
    if rt.quantization == "nf4":
        keep_4bit_trainable(model, getattr(torch, rt.dtype))
        notes.append(f"weights: 4-bit NF4 (bitsandbytes), compute {rt.dtype}")
    else:
        notes.append(f"weights: {rt.dtype}, not quantized")
    if spec is not None:
        notes.append(f"rope: {spec.method} factor {spec.factor}")
    return model, notes


def keep_4bit_trainable(model: Any, compute: Any) -> int:
    """Make every 4-bit linear of a model that will train compute in ``compute`` (float32 on CPU,
    bf16/fp16 on GPU) and keep its weights in the layout that back-propagates; returns the count.

    On a CPU with AVX512-BF16, bitsandbytes (0.49+) repacks a ``Linear4bit``'s weight for its
    inference kernel the first time the layer runs in eval mode without gradients (an evaluation
    probe while training, a held-out loss before it), and from then on the layer's forward calls
    that kernel, which has no autograd formula: the gradient of the layer's input is silently
    dropped (PyTorch only warns), so every layer below trains on the LoRA paths' gradient alone.
    A model that will train keeps the trainable layout."""
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.compute_dtype, m.compute_type_is_set = compute, True
            m.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward before repacking
            n += 1
    return n


def build_trainable_model(
    recipe: Recipe, rt: Runtime, start_adapter: str | Path | None = None
) -> tuple[Any, list[str]]:
    """Base model + LoRA (fresh, or continued from ``start_adapter``) ready for training."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from longqa.models.load import peft_wrapping

    model, notes = load_base(recipe, rt)
    gc = recipe.train.gradient_checkpointing
    if rt.quantization == "nf4":  # fp32 norms/embeddings; checkpointing is switched on below
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gc:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()
    with peft_wrapping():
        if start_adapter is not None:
            model = PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
            notes.append(f"LoRA: continued from {start_adapter}")
        else:
            model = get_peft_model(model, lora_config(recipe, model))
    trainable, total = model.get_nb_trainable_parameters()
    notes.append(
        f"LoRA r={recipe.lora.r} alpha={recipe.lora.alpha} on {recipe.lora.target_modules}"
        f"{' + norms' if recipe.lora.trainable_norms else ''}: {trainable:,} trainable of {total:,}"
    )
    notes.append(f"gradient checkpointing: {'on' if gc else 'off'}")
    notes.extend(_apply_kernels(model, recipe, rt.dtype))
    model.train()
    return model, notes


def _apply_kernels(model: Any, recipe: Recipe, compute_dtype: str) -> list[str]:
    """Fused RoPE / activation offloading per recipe; ``kernels.chunked_ce`` picks the loss path."""
    import torch

    from longqa.ops.causal_lm import unwrap_causal_lm
    from longqa.patch.kernels import apply_kernels

    notes = apply_kernels(
        unwrap_causal_lm(model),
        recipe.kernels,
        recipe.memory,
        compute_dtype=getattr(torch, compute_dtype),
    )
    ce = "chunked" if recipe.kernels.chunked_ce else "full logits"
    notes.append(f"loss: {ce} cross-entropy (chunk {recipe.train.loss_chunk_size} tokens)")
    return notes
