"""distillspec: exact speculative decoding for Hugging Face causal LMs, and DistillSpec.

Main entry points::

    from distillspec import load_model, speculative_generate, autoregressive_generate
    target, tokenizer = load_model("default")
"""

from .decoding import GenerationResult, GenerationStats, autoregressive_generate, speculative_generate
from .drafters import DraftProposal, Drafter, ModelDrafter, PromptLookupDrafter, load_drafter
from .errors import DistillSpecError
from .models import load_model
from .sampling import Lenience, SamplingConfig

__all__ = [
    "DistillSpecError",
    "DraftProposal",
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
