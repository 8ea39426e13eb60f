"""The distillation recipe: one dataclass, loadable from JSON, validated up front."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistillSpecError
from ..data.sources import check_heldout_fraction, check_on_policy_fraction
from ..models.adapters import check_lora_rank
from ..models.quant import check_quant
from .divergences import DIVERGENCES, check_beta

TARGET_DTYPES = ("float32", "bfloat16", "auto")

DATA_SOURCES = ("fixed", "target", "draft", "mixed")
OFF_POLICY_SOURCES = ("fixed", "target")
LOSSES = DIVERGENCES + ("ce",)  # 'ce': the supervised (cross-entropy) baseline


@dataclass
class DistillConfig:
    """Everything that defines a distillation run; saved beside its checkpoints."""

    target: str = "smollm2-135m"  # the studies so far; the real pair is issue 11
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
    teacher_top_k: int = 0  # > 0 (fixed/target data): cache completions and the target's top-k on disk
    teacher_cache: str = ""  # the cache folder ('' : <out>/teacher_cache); runs may share one
    heldout_fraction: float = 0.1
    eval_every: int = 25
    eval_prompts: int = 16  # held-out prompts for expected acceptance (0: no evaluation during the run)
    spec_eval_prompts: int = 4  # held-out prompts run through the engine (greedy)
    spec_eval_tokens: int = 48
    eval_gamma: int = 4
    save_every: int = 25
    seed: int = 0

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DistillSpecError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "DistillConfig":
        if self.divergence not in LOSSES:
            raise DistillSpecError(f"unknown divergence {self.divergence!r}; choose one of {', '.join(LOSSES)}")
        check_beta(self.beta)
        if self.data_source not in DATA_SOURCES:
            raise DistillSpecError(f"unknown data source {self.data_source!r}; choose one of {', '.join(DATA_SOURCES)}")
        if self.off_policy_source not in OFF_POLICY_SOURCES:
            raise DistillSpecError(
                f"unknown off-policy source {self.off_policy_source!r}; choose one of {', '.join(OFF_POLICY_SOURCES)}"
            )
        check_on_policy_fraction(self.on_policy_fraction)
        if self.divergence == "ce" and self.data_source in ("draft", "mixed"):
            raise DistillSpecError("the supervised baseline (ce) trains on fixed or target-generated text")
        for name in ("steps", "batch_size", "grad_accum", "max_new_tokens", "eval_every", "save_every", "eval_gamma"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DistillSpecError(f"{name} must be an integer >= 1, got {value!r}")
        if self.lr <= 0:
            raise DistillSpecError(f"lr must be > 0, got {self.lr!r}")
        if self.sample_temperature < 0:
            raise DistillSpecError(f"sample_temperature must be >= 0, got {self.sample_temperature!r}")
        check_heldout_fraction(self.heldout_fraction)
        self._validate_models()
        return self

    def _validate_models(self) -> None:
        if self.target_dtype not in TARGET_DTYPES:
            raise DistillSpecError(f"unknown target_dtype {self.target_dtype!r}; choose one of {', '.join(TARGET_DTYPES)}")
        if self.draft.startswith("layers:") and self.target_dtype != "float32":
            raise DistillSpecError("a layers: draft shares the target's tensors and trains in float32; "
                                   f"use target_dtype float32, not {self.target_dtype!r}")
        check_lora_rank(self.lora_rank)
        check_quant(self.sample_quant)
        if self.freeze_embeddings and self.lora_rank:
            raise DistillSpecError("freeze_embeddings applies to full fine-tuning (lora_rank 0); a LoRA run "
                                   f"(lora_rank {self.lora_rank}) already trains its adapter alone")
        if self.lora_alpha < 0:
            raise DistillSpecError(f"lora_alpha must be >= 0 (0: twice the rank), got {self.lora_alpha!r}")
        if not isinstance(self.teacher_top_k, int) or self.teacher_top_k < 0:
            raise DistillSpecError(f"teacher_top_k must be an integer >= 0 (0: no cache), got {self.teacher_top_k!r}")
        if self.teacher_top_k and self.data_source not in OFF_POLICY_SOURCES:
            raise DistillSpecError(f"teacher_top_k caches off-policy data; data_source {self.data_source!r} is "
                                   f"sampled fresh each step (use {' or '.join(OFF_POLICY_SOURCES)})")

    def uses_on_policy(self) -> float:
        """The fraction of examples whose completions the draft generates."""
        return {"draft": 1.0, "mixed": self.on_policy_fraction}.get(self.data_source, 0.0)

    def off_policy(self) -> str:
        return self.data_source if self.data_source in ("fixed", "target") else self.off_policy_source
