"""The one typed config schema: recipes for training (and the model/RoPE settings eval reuses).

Usage::

    from longqa.config.recipe import load_recipe
    recipe = load_recipe("qwen14b-yarn32k", overrides=["train.lr=1e-4"])
    recipe.rope.method, recipe.train.phases[0].kind

A recipe is a YAML file in ``recipes/`` (loaded by name) or any path. Unknown keys and wrong types are
errors that name the key and the file. ``overrides`` are dotted ``key=value`` strings whose values are
parsed as YAML scalars and validated by the same schema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from longqa.config.keys import nearest_key
from longqa.config.switches import CPU_RETURN_FREED_FROM as CPU_RETURN_FREED_FROM
from longqa.config.switches import KernelsConfig as KernelsConfig
from longqa.config.switches import MemoryConfig as MemoryConfig
from longqa.config.switches import StrictModel
from longqa.core.errors import LongqaError


class ModelConfig(StrictModel):
    """Which base model to load and how."""

    name: str = Field(
        description="alias (e.g. smollm2-135m), local HF folder, .gguf file or hub id"
    )
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    quantization: Literal["nf4", "none"] = "nf4"
    double_quant: bool = True
    layout: Literal["auto", "hf", "original-qwen"] = Field(
        "auto", description="checkpoint layout; original-qwen is converted to Qwen2 on load"
    )
    trust_remote_code: bool = False


class RopeConfig(StrictModel):
    """A RoPE scaling spec. ``method`` names an entry of ``longqa.ops.rope_scaling``'s registry.

    Unset values fall back to the model config (base, original window) or the method's defaults.
    """

    method: str = Field(
        "none", description="scaling method, a name in the registry (`longqa rope methods`)"
    )
    factor: float | None = Field(None, description="scale s = target / original length")
    original_max_position_embeddings: int | None = Field(
        None, description="original (pretraining) window L0 — default: the model's"
    )
    base: float | None = Field(None, description="new rope base (abf, ntk) — default: model's")
    beta_fast: float = Field(32.0, description="yarn: extrapolation bound (rotations)")
    beta_slow: float = Field(1.0, description="yarn: interpolation bound (rotations)")
    attention_factor: float | None = Field(None, description="override of the mscale factor")
    margin: int = Field(512, ge=0, description="dynamic-yarn: scale from current length + margin")
    low_freq_factor: float = Field(
        1.0, description="llama3: wavelengths above L0/this are divided by s"
    )
    high_freq_factor: float = Field(4.0, description="llama3: wavelengths below L0/this are kept")
    ntk_variant: Literal["hf", "qwen"] = Field("hf", description="dynamic-ntk: hf or qwen formula")
    max_position_embeddings: int | None = Field(None, description="target window after scaling")
    logn: bool = Field(
        False, description="original Qwen's log-n query scaling past the original window"
    )

    @field_validator("factor")
    @classmethod
    def _factor_at_least_one(cls, v: float | None) -> float | None:
        if v is not None and v < 1.0:
            raise ValueError(f"factor must be >= 1 (got {v})")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from longqa.ops.rope_scaling import available_methods

        names = available_methods()
        if v not in names:
            raise ValueError(f"unknown rope method '{v}'; available: {', '.join(names)}")
        return v


class LoraConfig(StrictModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    trainable_norms: bool = True


class DatasetSpec(StrictModel):
    path: str
    weight: float = Field(1.0, gt=0)
    format: Literal["auto", "messages", "openai", "sharegpt", "alpaca", "columns", "text"] = Field(
        "auto", description="row format (longqa.data.formats); auto detects it per row"
    )
    columns: list[str] | None = Field(
        None,
        min_length=2,
        max_length=3,
        description="user, assistant[, system] column names of prompt/response rows (CSV, …)",
    )


class PhaseConfig(StrictModel):
    """One training phase; each phase starts from the previous phase's adapter."""

    name: str
    kind: Literal["pretrain", "sft"]
    datasets: list[DatasetSpec] = Field(default_factory=list)
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    max_length: int | None = Field(None, ge=16, description="default: train.max_length")
    lr: float | None = Field(None, gt=0, description="default: train.lr")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> PhaseConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError(f"phase '{self.name}': set steps or epochs")
        return self


class DataConfig(StrictModel):
    packing: bool = False
    group_by_length: bool = True
    overlength: Literal["truncate", "drop", "error"] = Field(
        "truncate", description="an SFT example over max_length: cut its end, drop it, or fail"
    )


class TrainConfig(StrictModel):
    lr: float = Field(5e-5, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.01, ge=0, le=1)
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(64, ge=1)
    max_length: int = Field(32768, ge=16)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "paged_adamw_8bit"
    gradient_checkpointing: bool = True
    loss_chunk_size: int = Field(
        4096, ge=0, description="tokens per chunk of the LM-head loss; 0 = chosen from memory"
    )
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    phases: list[PhaseConfig] = Field(default_factory=list)

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum


class EvalConfig(StrictModel):
    """Long-context probes run on the model being trained (``longqa.train.eval_callback``)."""

    enabled: bool = False
    every_steps: int = Field(0, ge=0, description="every N optimizer steps (0: phase ends only)")
    at_end: bool = Field(True, description="also at the end of every phase")
    lengths: list[int] = Field(default_factory=lambda: [4096], description="context lengths")
    samples: int = Field(2, ge=1, description="passkey trials / needle depths / RULER samples")
    passkey: bool = True
    needle: bool = False
    ruler: list[str] = Field(
        default_factory=lambda: ["niah_single_1", "vt"], description="RULER task names"
    )
    haystack: str | None = Field(None, description="essay folder (default: the shared essays)")
    max_new_tokens: int | None = Field(
        None, ge=1, description="cap on RULER's tokens to generate (default: RULER's per task)"
    )
    threshold: float = Field(85.6, ge=0, le=100, description="effective-context threshold")
    collapse_ratio: float = Field(
        0.5, gt=0, le=1, description="warn when the longest length falls below this × its best"
    )

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, v: list[int]) -> list[int]:
        if not v or any(x < 64 for x in v):
            raise ValueError(f"lengths must be a non-empty list of lengths >= 64 (got {v})")
        return sorted(set(v))


class OutputConfig(StrictModel):
    dir: str = "runs/{name}"


class Recipe(StrictModel):
    name: str
    description: str = ""
    model: ModelConfig
    rope: RopeConfig = Field(default_factory=RopeConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    kernels: KernelsConfig = Field(default_factory=KernelsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir.format(name=self.name))


def recipes_dir() -> Path:
    """Folder of shipped recipes (the repo's ``recipes/`` or the installed copy)."""
    package = Path(__file__).resolve().parents[1]
    for cand in (package.parent / "recipes", package / "_recipes"):
        if cand.is_dir():
            return cand
    raise LongqaError("shipped recipes folder not found (reinstall longqa)")


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str) -> Path:
    """A shipped recipe name or a path to a YAML file → the file's path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LongqaError(f"recipe file not found: {path}")
        return path
    cand = recipes_dir() / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    raise LongqaError(
        f"unknown recipe '{name_or_path}'; available: {', '.join(list_recipes())} (or a YAML path)"
    )


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        here = ".".join(keys[: i + 1])
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise LongqaError(
                    f"{source}: '{here}' is not a valid list index (the list has {len(node)} items)"
                )
            index: int | str = int(key)
        elif isinstance(node, dict):
            index = key
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            parent = ".".join(keys[:i])
            raise LongqaError(
                f"{source}: '{parent}' is a value, not a section (cannot set '{here}')"
            )
        if last:
            node[index] = value
        else:
            node = node[index]


def returns_freed_memory(recipe: Recipe) -> bool:
    """Whether CPU training returns freed activation memory to the OS: ``memory.cpu_return_freed``,
    where ``auto`` means from :data:`CPU_RETURN_FREED_FROM` tokens on. Measured on SmolLM2-135M
    (``benchmarks/results/train_cpu.md``): at 2K tokens glibc's default takes 0.78× plain
    transformers' CPU time at 0.92× its peak RSS, returning 1.15× at 0.40×; at 8K returning takes
    0.88× the time at 0.20× the memory, where plain's 11.9 GB make memory the limit."""
    flag = recipe.memory.cpu_return_freed
    return recipe_max_length(recipe) >= CPU_RETURN_FREED_FROM if flag == "auto" else flag


def recipe_max_length(recipe: Recipe) -> int:
    """Longest sequence the recipe trains on (the largest phase length, else train.max_length)."""
    lengths = [p.max_length for p in recipe.train.phases if p.max_length]
    return max([recipe.train.max_length, *lengths]) if lengths else recipe.train.max_length


def apply_overrides(
    tree: dict[str, Any], overrides: list[str] | None, source: str | None = None
) -> dict[str, Any]:
    """Return a copy of ``tree`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    List items are addressed by index (``train.phases.0.steps=5``); ``source`` (the recipe file)
    prefixes error messages.
    """
    out = copy.deepcopy(tree)
    prefix = f"{source}: " if source else ""
    for item in overrides or []:
        if "=" not in item:
            raise LongqaError(f"{prefix}--set '{item}': expected key=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise LongqaError(f"{prefix}--set '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise LongqaError(f"{prefix}--set {key}: cannot parse value '{raw}': {why}") from None
        _set_dotted(out, key, value, f"{prefix}--set {key}")
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            near = nearest_key(Recipe, loc)
            msg = "unknown key" + (f" (did you mean {near}?)" if near else "")
        parts.append(f"'{loc}': {msg}")
    return f"{source}: " + "; ".join(parts)


def recipe_from_dict(tree: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a plain dict as a :class:`Recipe`, raising a one-line :class:`LongqaError`."""
    if not isinstance(tree, dict):
        raise LongqaError(f"{source}: expected a mapping at the top level")
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise LongqaError(_format_validation_error(exc, source)) from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or a YAML file by path, apply dotted overrides, validate."""
    path = resolve_recipe_path(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise LongqaError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise LongqaError(f"{path}: expected a mapping at the top level")
    tree.setdefault("name", path.stem)
    source = str(path) + (f" (with --set {', '.join(overrides)})" if overrides else "")
    return recipe_from_dict(apply_overrides(tree, overrides, str(path)), source)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved next to trained adapters)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
