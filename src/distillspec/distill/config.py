"""The distillation recipe: one dataclass, loadable from JSON, validated up front.

Validation is one schema (`validate_fields`): every key's type comes from its field's
default (a JSON string where a number belongs, NaN, or `null` is refused with the key's
name), and `RANGES` holds each number's allowed interval. Cross-key rules follow. The
module imports no torch, so `distillspec distill --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..choices import (DATA_SOURCES, DIVERGENCES, LOSSES, OFF_POLICY_SOURCES, QUANT_CHOICES, TARGET_DTYPES,
                       TEACHER_BACKENDS)
from ..errors import DistillSpecError

__all__ = ["DATA_SOURCES", "DIVERGENCES", "LOSSES", "OFF_POLICY_SOURCES", "TARGET_DTYPES", "DistillConfig", "RANGES"]

#: allowed values of the numeric keys: (low, high, low_included, high_included, what it means)
RANGES = {
    "beta": (0.0, 1.0, True, True, "JSD beta"),
    "on_policy_fraction": (0.0, 1.0, True, True, "the on-policy fraction lambda"),
    "sample_temperature": (0.0, math.inf, True, False, "the sampling temperature"),
    "lr": (0.0, math.inf, False, False, "the learning rate"),
    "min_lr_ratio": (0.0, 1.0, True, True, "the cosine floor, a fraction of lr"),
    "weight_decay": (0.0, math.inf, True, False, "the weight decay"),
    "lora_alpha": (0.0, math.inf, True, False, "the LoRA scale numerator (0: twice the rank)"),
    "heldout_fraction": (0.0, 1.0, True, False, "the held-out fraction"),
    **dict.fromkeys(("steps", "batch_size", "grad_accum", "max_new_tokens", "eval_every", "save_every",
                     "eval_gamma", "max_prompt_tokens"), (1, math.inf, True, False, "")),
    **dict.fromkeys(("warmup_steps", "prompt_limit", "eval_prompts", "spec_eval_prompts", "seed"),
                    (0, math.inf, True, False, "")),
    "spec_eval_tokens": (1, math.inf, True, False, ""),
    "lora_rank": (0, math.inf, True, False, "0: train all weights"),
    "teacher_top_k": (0, math.inf, True, False, "0: the dense teacher"),
    "branch_step": (0, math.inf, True, False, "the step of branch_from's checkpoint"),
}
#: keys that name one of a fixed set
CHOICES = {"divergence": LOSSES, "data_source": DATA_SOURCES, "off_policy_source": OFF_POLICY_SOURCES,
           "sample_quant": QUANT_CHOICES, "target_dtype": TARGET_DTYPES, "teacher_backend": TEACHER_BACKENDS}
#: how each key's kind is written in an error
KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_kind(key: str, value, kind: type) -> None:
    """`value` must be of `kind` as JSON would give it: an int for a float is fine, a bool
    is not a number, and a float must be finite."""
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise DistillSpecError(f"{key} must be a finite number, got {value!r}")
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise DistillSpecError(f"{key} must be {KIND_NAMES[kind]}, got {value!r} ({type(value).__name__})")


def check_range(key: str, value) -> None:
    if key not in RANGES:
        return
    low, high, low_in, high_in, meaning = RANGES[key]
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (above and below):
        if high == math.inf:
            allowed = f">= {low:g}" if low_in else f"> {low:g}"
        else:
            allowed = f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        noun = f" ({meaning})" if meaning else ""
        kind = "an integer " if isinstance(low, int) else ""
        raise DistillSpecError(f"{key} must be {kind}{allowed}{noun}, got {value!r}")


def validate_fields(config: "DistillConfig") -> None:
    """Every key's type, range and choice, each error naming the key."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        check_kind(field.name, value, type(field.default))
        check_range(field.name, value)
        allowed = CHOICES.get(field.name)
        if allowed is not None and value not in allowed:
            raise DistillSpecError(f"unknown {field.name} {value!r}; choose one of {', '.join(allowed)}")


@dataclass
class DistillConfig:
    """Everything that defines a distillation run; saved beside its checkpoints."""

    target: str = "smollm2-135m"  # the small model: recipes name the real pair explicitly
    draft: str = "layers:0,1,28,29"  # a model spec, or layers:... of the target
    prompts: str = "humaneval"  # see data.load_prompts
    out: str = "runs/distill"
    divergence: str = "fkl"  # fkl | rkl | jsd | tvd | ce (supervised baseline)
    beta: float = 0.5  # JSD(beta)
    data_source: str = "draft"  # fixed | target | draft | mixed
    on_policy_fraction: float = 0.5  # lambda: P(draft-generated) per example, for 'mixed'
    off_policy_source: str = "target"  # what 'mixed' uses otherwise: fixed | target
    sample_temperature: float = 1.0  # temperature of generated completions
    sample_quant: str = "none"  # on-policy samples from the draft as is (none) or an int8 snapshot (int8; slower on AVX2)
    max_new_tokens: int = 64  # completion length during training
    max_prompt_tokens: int = 256  # longer prompts are skipped
    prompt_limit: int = 0  # use only the first N prompts of the source (0: all)
    chat: bool = True  # wrap prompts in the target's chat template when it has one
    batch_size: int = 4  # per process, per micro-batch
    grad_accum: int = 1
    steps: int = 100  # optimizer steps
    lr: float = 3e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay floor, as a fraction of lr
    weight_decay: float = 0.0
    bf16: bool = True  # bf16 autocast of the draft (CPU or GPU); master weights stay fp32
    target_dtype: str = "float32"  # the target's weights: float32 | bfloat16 | auto (bf16 where the CPU has it natively)
    lora_rank: int = 0  # 0: train every draft weight; r > 0: a peft LoRA adapter of rank r on all linear layers
    lora_alpha: float = 0.0  # LoRA scale numerator (0: 2 * lora_rank)
    freeze_embeddings: bool = False  # full fine-tuning: keep the draft's token embedding and LM head as they are
    teacher_backend: str = "torch"  # torch: the target dequantized in torch | llama.cpp: its GGUF in llama.cpp
    teacher_top_k: int = 0  # > 0: the teacher is its top-k (fixed/target data: cached on disk); llama.cpp needs it
    teacher_cache: str = ""  # the cache folder ('' : <out>/teacher_cache); runs may share one
    heldout_fraction: float = 0.1
    eval_every: int = 25
    eval_prompts: int = 16  # held-out prompts for expected acceptance (0: no evaluation during the run)
    spec_eval_prompts: int = 4  # held-out prompts run through the engine (greedy)
    spec_eval_tokens: int = 48
    eval_gamma: int = 4
    save_every: int = 25
    seed: int = 0
    branch_from: str = ""  # a run folder whose checkpoint this run starts from (a second stage); '' : from the draft
    branch_step: int = 0  # the step that checkpoint must be at (the run then trains from there to `steps`)

    @classmethod
    def from_file(cls, path: str | Path) -> "DistillConfig":
        path = Path(path)
        if not path.is_file():
            raise DistillSpecError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DistillSpecError(f"{path} is not valid JSON: {exc.msg}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        if not isinstance(data, dict):
            raise DistillSpecError(f"a config is a JSON object of keys and values, got {type(data).__name__}: "
                                   f"{json.dumps(data)[:60]}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DistillSpecError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "DistillConfig":
        """Raises DistillSpecError naming the first key at fault; returns self."""
        validate_fields(self)
        if self.divergence == "ce" and self.data_source in ("draft", "mixed"):
            raise DistillSpecError("the supervised baseline (ce) trains on fixed or target-generated text")
        if self.draft.startswith("layers:") and self.target_dtype != "float32":
            raise DistillSpecError("a layers: draft shares the target's tensors and trains in float32; "
                                   f"use target_dtype float32, not {self.target_dtype!r}")
        if self.freeze_embeddings and self.lora_rank:
            raise DistillSpecError("freeze_embeddings applies to full fine-tuning (lora_rank 0); a LoRA run "
                                   f"(lora_rank {self.lora_rank}) already trains its adapter alone")
        if self.teacher_backend == "llama.cpp":
            if self.draft.startswith("layers:"):
                raise DistillSpecError("a layers: draft is built from the torch target's own tensors; with "
                                       "teacher_backend llama.cpp give a draft model (e.g. a make-draft folder)")
            if self.divergence != "ce" and not self.teacher_top_k:
                raise DistillSpecError("teacher_backend llama.cpp scores with the target's top-k: set teacher_top_k "
                                       "(e.g. 64)")
        elif self.teacher_top_k and self.data_source not in OFF_POLICY_SOURCES:
            raise DistillSpecError(f"teacher_top_k caches off-policy data; data_source {self.data_source!r} is "
                                   f"sampled fresh each step (use {' or '.join(OFF_POLICY_SOURCES)}, or "
                                   "teacher_backend llama.cpp, whose top-k scores each step's text)")
        self._validate_branch()
        return self

    def _validate_branch(self) -> None:
        if not self.branch_from:
            if self.branch_step:
                raise DistillSpecError(f"branch_step {self.branch_step} needs branch_from (the run whose checkpoint "
                                       "it names)")
            return
        if not 1 <= self.branch_step < self.steps:
            raise DistillSpecError(f"branch_step must be the step of {self.branch_from}'s checkpoint, in [1, steps "
                                   f"{self.steps}), got {self.branch_step}")
        if Path(self.branch_from).resolve() == Path(self.out).resolve():
            raise DistillSpecError(f"branch_from {self.branch_from!r} is this run's own folder; to continue a run, "
                                   "use --resume")

    def caches_teacher(self) -> bool:
        """Whether completions and the teacher's top-k are kept on disk (fixed/target data)."""
        return bool(self.teacher_top_k) and self.data_source in OFF_POLICY_SOURCES

    def uses_on_policy(self) -> float:
        """The fraction of examples whose completions the draft generates."""
        return {"draft": 1.0, "mixed": self.on_policy_fraction}.get(self.data_source, 0.0)

    def off_policy(self) -> str:
        return self.data_source if self.data_source in ("fixed", "target") else self.off_policy_source
