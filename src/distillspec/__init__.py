"""distillspec: exact speculative decoding for Hugging Face causal LMs, and DistillSpec.

Main entry points::

    from distillspec import load_model, load_drafter, speculative_generate, autoregressive_generate
    target, tokenizer = load_model("default")

Layers (docs/design.md): cli -> eval -> distill -> {models, data} -> engine -> {metrics,
errors, atomic}; each imports only downward.
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
    autoregressive_generate,
    speculative_generate,
)
from .errors import DistillSpecError
from .models import load_drafter, load_model

__all__ = [
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
