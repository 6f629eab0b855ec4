"""The experiment file (``experiments/*.yaml``): one pydantic schema, loaded with one-line errors.

Usage::

    exp = load_experiment("experiments/paraphrase-ablation.yaml")
    prof = exp.profile("cpu")            # sizes of one profile; unknown names raise LongqaError

Fields: the base ``recipe`` (LoRA shape, optimiser) and per-profile model / RoPE / sizes, the
``corpus`` and its train/eval ``split`` (by source file, seeded), the ``arms`` (answer forms), the
``evals`` and the ``seed``. Every trained arm uses the same recipe, steps and seed; only the answer
form of its data differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from longqa.config.recipe import RopeConfig, _format_validation_error
from longqa.core.errors import LongqaError

FORMS = ("paraphrase", "paraphrase-index", "index-detailed", "detailed", "wrong-quote")
PROBES = ("probe", "probe-prefix", "probe-xcorpus")
EVALS = (*PROBES, "passage-retrieval", "mdqa", "needle", "passkey")


EvalName = Literal[
    "probe", "probe-prefix", "probe-xcorpus", "passage-retrieval", "mdqa", "needle", "passkey"
]  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Arm(_Strict):
    name: str
    form: Literal[
        "paraphrase", "paraphrase-index", "index-detailed", "detailed", "wrong-quote", "none"
    ] = Field(description="answer form of the training data; none = no training (the floor)")
    match_tokens_of: str | None = Field(
        None,
        description="train on as many answer tokens as this arm: more samples and steps (one "
        "epoch, the same lr schedule stretched), the ratio taken from an unmatched arm of this form",
    )


class Split(_Strict):
    eval_fraction: float = Field(0.5, gt=0, lt=1, description="share of source files held out")
    seed: int = 0
    min_files: int = Field(4, ge=2, description="fewest source files a corpus may have")


class TrainSizes(_Strict):
    samples: int = Field(ge=1, description="W-shaped training samples per arm")
    target_tokens: int = Field(ge=256)
    docs_per_group: int = Field(ge=2)
    max_doc_tokens: int = Field(ge=32)
    turns: int = Field(2, ge=1)
    steps: int = Field(ge=1, description="optimizer steps, the same for every trained arm")
    lr: float = Field(gt=0)
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(ge=256)
    quantization: Literal["nf4", "none"] = "none"
    dtype: Literal["bfloat16", "float16", "float32"] = "float32"
    save_steps: int = Field(10, ge=1)
    gradient_checkpointing: bool = Field(True, description="off: faster at short contexts")


class EvalSizes(_Strict):
    n: int = Field(ge=1, description="samples per eval (passage retrieval: per variant)")
    mdqa_target_tokens: int = Field(ge=256)
    pr_paragraphs: int = Field(ge=2, description="paragraphs per passage-retrieval sample")
    pr_max_words: int = Field(400, ge=10, description="longest paragraph (words)")
    needle_lengths: list[int]
    passkey_lengths: list[int]
    depths: list[float] = Field(description="needle/passkey depths spread over the context")
    passkey_trials: int = Field(ge=1, description="trials per passkey length")
    max_new_tokens: int = Field(ge=32, description="budget of form-aware answers (quote + answer)")
    batch_size: int = Field(1, ge=1)
    effective_samples: int = Field(
        4, ge=0, description="samples per arm for effective tokens (0: skip that stage)"
    )
    min_docs: int = Field(2, ge=2, description="probe samples with fewer documents are skipped")

    @model_validator(mode="after")
    def _depths_in_range(self) -> EvalSizes:
        if any(not 0 <= d <= 1 for d in self.depths):
            raise ValueError(f"depths must lie in [0, 1] (got {self.depths})")
        return self


class Throughput(_Strict):
    """Measured rates the dry-run estimate uses (tokens per second on the profile's device)."""

    train_tokens_per_s: float = Field(gt=0)
    prefill_tokens_per_s: float = Field(gt=0)
    decode_tokens_per_s: float = Field(gt=0)
    load_s: float = Field(10.0, ge=0, description="seconds to load the model once")


class Profile(_Strict):
    description: str = ""
    model: str
    rope: RopeConfig = RopeConfig()
    device: Literal["cpu", "cuda"] = "cpu"
    budget_minutes: float = Field(gt=0, description="what the whole run should take at most")
    piece_minutes: float | None = Field(
        None, gt=0, description="--dry-run lists --only pieces of at most this many minutes"
    )
    train: TrainSizes
    eval: EvalSizes
    throughput: Throughput
    evals: list[EvalName] | None = Field(None, description="this profile's evals (else the file's)")


class Experiment(_Strict):
    name: str
    description: str = ""
    recipe: str = Field(description="base recipe (LoRA shape, optimiser) every arm trains with")
    corpus: str = Field(description="folder of text files, or 'shared-essays'")
    split: Split = Split()
    arms: list[Arm] = Field(min_length=1)
    evals: list[EvalName] = Field(min_length=1)
    question_style: Literal["prefix", "scattered"] = Field(
        "scattered", description="how training and 'probe' questions name the passage"
    )
    cross_corpus: Literal["python-docs"] = Field(
        "python-docs", description="corpus of 'probe-xcorpus' (Python's stdlib documentation)"
    )
    retrieval_variants: list[Literal["verbatim", "keywords"]] = ["verbatim", "keywords"]
    seed: int = 0
    profiles: dict[str, Profile] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _unique_arms(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique (got {names})")
        for a in self.arms:
            if a.match_tokens_of is None:
                continue
            if a.match_tokens_of not in names or a.form == "none":
                raise ValueError(f"arm '{a.name}': match_tokens_of names no trained arm")
            if not any(b.form == a.form and b.match_tokens_of is None for b in self.arms):
                raise ValueError(
                    f"arm '{a.name}': match_tokens_of needs an unmatched arm of form '{a.form}'"
                )
        return self

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise LongqaError(
                f"{self.source}: field 'profiles' has no profile '{name}'; "
                f"available: {', '.join(self.profiles)}"
            )
        return self.profiles[name]

    def for_profile(self, name: str) -> Experiment:
        """This experiment with the profile's ``evals`` (when it names its own)."""
        evals = self.profile(name).evals
        exp = self.model_copy(update={"evals": evals}) if evals else self
        exp.source = self.source
        return exp

    def corpus_path(self) -> Path:
        if self.corpus == "shared-essays":
            from longqa.core.paths import shared_essays

            found = shared_essays()
            if found is None:
                raise LongqaError(f"{self.source}: field 'corpus': the shared essays are absent")
            return found
        path = Path(self.corpus).expanduser()
        if not path.is_absolute() and self.source:
            alt = Path(self.source).parent.parent / path
            path = alt if alt.exists() else path
        if not path.exists():
            raise LongqaError(f"{self.source}: field 'corpus': {self.corpus} not found")
        return path


def experiments_dir() -> Path:
    """The shipped ``experiments/`` folder (next to ``recipes/``)."""
    return Path(__file__).resolve().parents[2] / "experiments"


def experiment_from_dict(tree: Any, source: str = "<experiment>") -> Experiment:
    """Validate a mapping as an :class:`Experiment`; errors are one line naming the field."""
    if not isinstance(tree, dict):
        raise LongqaError(f"{source}: expected a mapping at the top level")
    try:
        exp = Experiment.model_validate(tree)
    except ValidationError as exc:
        raise LongqaError(_format_validation_error(exc, source)) from None
    exp.source = source
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML (a path, or a name under ``experiments/``)."""
    p = Path(path)
    if not p.exists() and (experiments_dir() / f"{path}.yaml").exists():
        p = experiments_dir() / f"{path}.yaml"
    if not p.is_file():
        raise LongqaError(f"experiment file not found: {path}")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LongqaError(f"{p}: invalid YAML: {str(exc).splitlines()[0]}") from None
    return experiment_from_dict(tree, str(p))
