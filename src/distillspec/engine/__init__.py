"""The speculative decoding engine: pure sampling math, KV caches that roll back,
drafters, gamma policies and the generation loops. Imports nothing from models, data,
distill, eval or cli. Names load on first use (`distillspec.lazy`), so reading a constant
of one submodule does not import torch."""

from ..lazy import lazy_exports

_ORIGINS = {
    **dict.fromkeys(["DraftProposal", "Drafter", "DraftSession", "LookupFirstDrafter", "ModelDrafter",
                     "PromptLookupDrafter"], ".drafters"),
    **dict.fromkeys(["GenerationResult", "SpeculativeCall", "autoregressive_generate", "speculative_generate"], ".loop"),
    **dict.fromkeys(["Lenience", "SamplingConfig"], ".sampling"),
    **dict.fromkeys(["GenerationStats", "pool_stats"], ".stats"),
    "StopStrings": ".stops",
    "CostPrior": ".gamma",
}
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)
__all__ = sorted(_ORIGINS)
