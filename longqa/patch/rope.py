"""Patch RoPE scaling into a loaded HF model (Llama, Qwen2, Qwen3, Mistral and their MoE kin).

Usage::

    from longqa.config.rope_spec import rope_spec_from_options   # validated in config/
    from longqa.patch.rope import apply_rope_scaling, revert_rope_scaling
    spec = rope_spec_from_options("yarn", factor=4.0)
    apply_rope_scaling(model, spec)      # also works through a peft wrapper
    ...
    revert_rope_scaling(model)           # the original rotary module is back, logits bit-exact

The model's rotary embedding module(s) (``model.model.rotary_emb`` in transformers 5.x) are swapped
for :class:`LongqaRotaryEmbedding`, whose cos/sin carry the scaled frequencies and the attention
factor (``longqa.ops.rope_scaling``). The model config and library source are left untouched.

Dynamic methods (``dynamic-ntk``, ``dynamic-yarn``) fix their scale at prefill — a forward with more
than one new token, the first call, or a call starting at position 0 — and keep it for the
single-token decoding steps that follow, so cached keys and new queries share one rotation base.
The scale is per sample, as original Qwen computes it per sample: in a packed row (position ids
restart at each sample) and in a padded batch each sample's frequencies come from its own length
(the largest position of its run of consecutive positions + 1), never from the longest sample's.
A piece of a row cannot see where its samples end (sequence parallelism cuts rows between GPUs):
there the trainer hands the lengths computed on the whole row to the rotary modules for one forward::

    with sample_lengths_for(model, batch["sample_lengths"]):   # [B, T], like position_ids
        out = model(input_ids=..., position_ids=...)

``spec.logn`` adds original Qwen's log-n query scaling past the original window
(:mod:`longqa.patch.logn`), removed again by :func:`revert_rope_scaling`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from longqa.config.recipe import RopeConfig
from longqa.config.rope_spec import as_rope_spec
from longqa.core.errors import LongqaError
from longqa.ops.rope_scaling import compute_rope, is_dynamic, sample_lengths
from longqa.patch.families import FAMILIES, family_class_of, family_of
from longqa.patch.logn import apply_logn_attention, logn_factors, revert_logn_attention

# config.max_position_embeddings of a model patched with a method that sets no limit (the config
# field must be an int; int32's maximum is beyond any sequence a position tensor holds)
NO_FIXED_WINDOW = 2**31 - 1


class LongqaRotaryEmbedding(nn.Module):
    """Drop-in rotary embedding: ``forward(x, position_ids) -> (cos, sin)`` like HF's modules.

    ``cos``/``sin``: ``[batch, seq, head_dim]`` in ``x.dtype``, multiplied by the attention factor.
    """

    def __init__(
        self,
        original: nn.Module,
        spec: RopeConfig,
        *,
        head_dim: int,
        base: float,
        original_length: int,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)  # kept unregistered: restored by revert
        self.spec = spec
        self.params = spec.model_dump()
        self.head_dim, self.base, self.original_length = head_dim, base, original_length
        self.dynamic = is_dynamic(spec.method)
        self.fixed_seq_len: int | None = None  # longest sample length at the last prefill
        self._row_lengths: Tensor | None = None  # per row: the length its decoding continues
        self.given_lengths: Tensor | None = None  # set by sample_lengths_for for one forward
        self._by_length: dict[int, tuple[Tensor, float]] = {}
        self.num_rescales = 0
        self.logn_enabled = False  # set by longqa.patch.logn
        self.logn_factors: Tensor | None = None  # [B, T, 1] of the last forward
        self.logn_hooks: list[Any] = []
        inv_freq, self.attention_scaling = self._compute(None)
        # Float32 master copy as a plain attribute, so model.to(bfloat16) cannot round it.
        self._inv_freq = inv_freq
        self.rope_type = f"longqa-{spec.method}"

    @property
    def inv_freq(self) -> Tensor:
        """Current inverse frequencies, float32 ``[head_dim // 2]``."""
        return self._inv_freq

    @property
    def original_module(self) -> nn.Module:
        return self._original

    def _compute(self, seq_len: int | None) -> tuple[Tensor, float]:
        return compute_rope(
            self.params,
            head_dim=self.head_dim,
            base=self.base,
            original_max_position_embeddings=self.original_length,
            seq_len=seq_len,
        )

    def _at_length(self, seq_len: int) -> tuple[Tensor, float]:
        """(inv_freq, attention factor) at ``seq_len``, memoised."""
        if seq_len not in self._by_length:
            if len(self._by_length) > 256:
                self._by_length.clear()
            self._by_length[seq_len] = self._compute(seq_len)
        return self._by_length[seq_len]

    def _prefill_lengths(self, position_ids: Tensor) -> Tensor | None:
        """Per-token sample lengths ``[B, T]`` at prefill: the given ones (:func:`sample_lengths_for`)
        or inferred from ``position_ids``; ``None`` on a decoding step (prefill's are kept)."""
        given = self.given_lengths
        if given is not None:
            if tuple(given.shape) != tuple(position_ids.shape):
                raise LongqaError(
                    f"sample_lengths {tuple(given.shape)} do not match position_ids "
                    f"{tuple(position_ids.shape)}"
                )
            # >= 1: the Ulysses data adapter pads its pieces' [B, T] tensors with 0
            lengths = given.to(position_ids.device).long().clamp_min(1)
        elif self.fixed_seq_len is None or position_ids.shape[-1] > 1 or position_ids.min() == 0:
            lengths = sample_lengths(position_ids)
        else:
            return None
        row_lengths = lengths[:, -1].cpu()  # the sample that decoding continues, per row
        if self._row_lengths is None or not torch.equal(self._row_lengths, row_lengths):
            self.num_rescales += 1
        self._row_lengths = row_lengths
        self.fixed_seq_len = int(row_lengths.max().item())
        return lengths

    def _dynamic_freqs(self, position_ids: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-token (inv_freq ``[B, T, d/2]``, attention factor ``[B, T, 1]``)."""
        lengths = self._prefill_lengths(position_ids)
        if lengths is None:  # decoding: each row keeps its prefill length
            rows = self._row_lengths
            if rows is None or rows.numel() != position_ids.shape[0]:
                rows = torch.full((position_ids.shape[0],), int(self.fixed_seq_len or 1))
            lengths = rows.to(position_ids.device)[:, None].expand_as(position_ids)
        unique = torch.unique(lengths)
        table = [self._at_length(int(n)) for n in unique.tolist()]
        inv = torch.stack([t[0] for t in table]).to(device)  # [U, d/2]
        attn = torch.tensor([t[1] for t in table], dtype=torch.float32, device=device)  # [U]
        index = torch.searchsorted(unique.to(device), lengths.to(device).contiguous())  # [B, T]
        self._inv_freq, self.attention_scaling = table[-1][0].to(device), table[-1][1]
        return inv[index], attn[index][..., None]

    @torch.no_grad()
    def forward(
        self, x: Tensor, position_ids: Tensor | None = None, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if position_ids is None:
            position_ids = torch.arange(x.shape[-2], device=x.device)[None]
        if self.logn_enabled:
            self.logn_factors = logn_factors(position_ids, self.original_length)
        if self.dynamic:
            inv_freq, attn = self._dynamic_freqs(position_ids, x.device)  # [B, T, d/2], [B, T, 1]
            freqs = position_ids[..., None].float() * inv_freq
        else:
            if self._inv_freq.device != x.device:
                self._inv_freq = self._inv_freq.to(x.device)
            freqs = position_ids[..., None].float() * self._inv_freq  # [B, T, d/2]
            attn = self.attention_scaling
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, d]
        cos = emb.cos() * attn
        sin = emb.sin() * attn
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"method={self.spec.method}, head_dim={self.head_dim}, base={self.base:g}"


@contextmanager
def sample_lengths_for(model: nn.Module, lengths: Tensor | None) -> Iterator[int]:
    """Within the block, dynamic rotary modules of ``model`` take each token's sample length from
    ``lengths`` (``[B, T]``, the shape of the forward's ``position_ids``) instead of inferring it.

    Yields how many patched rotary modules receive them (0 for a model without the patch or when
    ``lengths`` is ``None``: the block then runs unchanged); the previous state is restored on exit.
    Static methods ignore the lengths. A shape mismatch raises a one-line :class:`LongqaError`.
    """
    if lengths is None:
        yield 0
        return
    modules = [m for m in model.modules() if isinstance(m, LongqaRotaryEmbedding)]
    saved = [m.given_lengths for m in modules]
    for m in modules:
        m.given_lengths = lengths
    try:
        yield len(modules)
    finally:
        for m, before in zip(modules, saved, strict=True):
            m.given_lengths = before


def _rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, module) for every rotary embedding module inside ``model``."""
    found = []
    for name, module in model.named_modules():
        if not name:
            continue
        is_ours = isinstance(module, LongqaRotaryEmbedding)
        is_hf = family_class_of(module, "rotary") is not None
        if is_ours or is_hf:
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name) if parent_name else model, attr, module))
    return found


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        raise LongqaError(
            f"model type '{getattr(config, 'model_type', '?')}' uses per-layer RoPE parameters, "
            "which rope scaling does not support"
        )
    return dict(params)


def _model_base(config: Any) -> float:
    params = _rope_parameters(config)
    base = params.get("rope_theta") or getattr(config, "rope_theta", None)
    base = base or getattr(config, "default_theta", None) or 10000.0
    return float(base)


def _original_length(config: Any) -> int:
    params = _rope_parameters(config)
    length = params.get("original_max_position_embeddings") or getattr(
        config, "max_position_embeddings", None
    )
    if not length:
        raise LongqaError("model config has no max_position_embeddings: cannot scale RoPE")
    return int(length)


def apply_rope_scaling(model: nn.Module, spec: RopeConfig | dict[str, Any]) -> nn.Module:
    """Replace the rotary embedding module(s) of ``model`` with scaled ones; returns ``model``.

    Re-applying first reverts the previous patch. ``method: none`` just reverts (native RoPE).
    Frequencies are computed from the model's base RoPE (``rope_theta``) and its original window
    (``original_max_position_embeddings`` or ``max_position_embeddings``) unless the spec sets them.
    """
    rope = as_rope_spec(spec)
    revert_rope_scaling(model)
    if rope.method == "none" and rope.attention_factor is None and rope.base is None:
        if not rope.logn:
            return model
    targets = _rotary_modules(model)
    if not targets:
        raise LongqaError(
            f"{type(model).__name__}: no rotary embedding module found; rope scaling supports "
            f"model types {', '.join(FAMILIES)}"
        )
    for parent, attr, module in targets:
        config = getattr(module, "config", None) or getattr(model, "config", None)
        family_of(config, "rope scaling")
        head_dim = 2 * int(module.inv_freq.numel())
        patched = LongqaRotaryEmbedding(
            module,
            rope,
            head_dim=head_dim,
            base=_model_base(config),
            original_length=_original_length(config),
        )
        patched._inv_freq = patched._inv_freq.to(module.inv_freq.device)
        patched.window_backup = _extend_window(config, rope)
        setattr(parent, attr, patched)
    if rope.logn:
        if len(targets) != 1:
            raise LongqaError("log-n attention needs a model with a single rotary embedding")
        apply_logn_attention(model, getattr(targets[0][0], targets[0][1]))
    return model


def _extend_window(config: Any, rope: RopeConfig) -> dict[str, Any] | None:
    """Raise ``config.max_position_embeddings`` to what ``rope`` addresses (:data:`NO_FIXED_WINDOW`
    for methods without a limit, such as dynamic ones without a factor), keeping the pretraining window as ``rope_parameters``'
    ``original_max_position_embeddings`` — transformers' meaning of both fields, so generation does
    not warn about a window the patch has extended. Returns what :func:`_restore_window` undoes."""
    native = getattr(config, "max_position_embeddings", None)
    if native is None or config is None:
        return None
    target = addressable_length(config, rope) or NO_FIXED_WINDOW
    if target <= native:
        return None
    params = getattr(config, "rope_parameters", None)
    backup = {"config": config, "max_position_embeddings": native, "rope_parameters": params}
    if isinstance(params, dict):
        config.rope_parameters = {"original_max_position_embeddings": native, **params}
    config.max_position_embeddings = target
    return backup


def _restore_window(backup: dict[str, Any] | None) -> None:
    if backup is not None:
        backup["config"].max_position_embeddings = backup["max_position_embeddings"]
        backup["config"].rope_parameters = backup["rope_parameters"]


def revert_rope_scaling(model: nn.Module) -> nn.Module:
    """Put the original rotary embedding module(s) back and remove log-n hooks (no-op when not
    patched)."""
    revert_logn_attention(model)
    for parent, attr, module in reversed(_rotary_modules(model)):
        if isinstance(module, LongqaRotaryEmbedding):
            _restore_window(getattr(module, "window_backup", None))
            setattr(parent, attr, module.original_module)
    return model


def get_rope_spec(model: nn.Module) -> RopeConfig | None:
    """The spec patched into ``model``, or ``None`` when it runs its native RoPE."""
    for _, _, module in _rotary_modules(model):
        if isinstance(module, LongqaRotaryEmbedding):
            return module.spec
    return None


def addressable_length(model_config: Any, spec: RopeConfig | dict[str, Any] | None) -> int | None:
    """Longest context ``spec`` is meant to address on a model with ``model_config``.

    ``spec.max_position_embeddings`` when set; ``factor × original window`` when a factor is set;
    the model's own window for no scaling; ``None`` when the method sets no limit (dynamic methods
    without a factor, ``abf`` without a target length).
    """
    native = getattr(model_config, "max_position_embeddings", None)
    if spec is None:
        return int(native) if native else None
    rope = as_rope_spec(spec)
    if rope.max_position_embeddings is not None:
        return int(rope.max_position_embeddings)
    if rope.method == "none":
        return int(native) if native else None
    original = rope.original_max_position_embeddings or _original_length(model_config)
    if rope.factor is not None:
        return int(rope.factor * original)
    return None
