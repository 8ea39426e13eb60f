"""distillspec: exact speculative decoding for Hugging Face causal LMs, and DistillSpec.

Main entry points::

    from distillspec import load_model, load_drafter, speculative_generate, autoregressive_generate
    target, tokenizer = load_model("default", dtype="bfloat16")   # Qwen2.5-Coder-1.5B-Instruct
    drafter = load_drafter("default", target, tokenizer)            # its measured best draft

Layers (docs/design.md): cli -> eval -> distill -> {models, data} -> engine -> {metrics,
errors, atomic, cpu}; each imports only downward.
"""

from .engine import (
    DraftProposal,
    Drafter,
    DraftSession,
    GenerationResult,
    GenerationStats,
    Lenience,
    ModelDrafter,
    PromptLookupDrafter,
    SamplingConfig,
    StopStrings,
    autoregressive_generate,
    speculative_generate,
)
from .data.sources import training_texts
from .errors import DistillSpecError
from .models import load_drafter as _load_drafter
from .models import load_model


def load_drafter(spec: str, target, target_tokenizer=None, **options):
    """`models.load_drafter`, with training text supplied for `@head=K` truncated heads
    (the default draft of the default target has one). See `models.drafts`."""
    options.setdefault("head_texts", training_texts)
    return _load_drafter(spec, target, target_tokenizer, **options)


__all__ = [
    "StopStrings",
    "DistillSpecError",
    "DraftProposal",
    "DraftSession",
    "Drafter",
    "GenerationResult",
    "GenerationStats",
    "Lenience",
    "ModelDrafter",
    "PromptLookupDrafter",
    "SamplingConfig",
    "autoregressive_generate",
    "load_drafter",
    "load_model",
    "speculative_generate",
]
__version__ = "0.1.0"
