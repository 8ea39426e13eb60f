"""The speculative decoding engine: pure sampling math, KV caches that roll back,
drafters, gamma policies and the generation loops. Imports nothing from models, data,
distill, eval or cli."""

from .drafters import DraftProposal, Drafter, DraftSession, ModelDrafter, PromptLookupDrafter
from .loop import GenerationResult, SpeculativeCall, autoregressive_generate, speculative_generate
from .sampling import Lenience, SamplingConfig
from .stats import GenerationStats, pool_stats
from .stops import StopStrings

__all__ = ["DraftProposal", "DraftSession", "Drafter", "GenerationResult", "GenerationStats", "Lenience",
           "ModelDrafter", "PromptLookupDrafter", "SamplingConfig", "SpeculativeCall", "StopStrings", "autoregressive_generate",
           "pool_stats", "speculative_generate"]
