"""distillspec: exact speculative decoding on llama.cpp and torch/HF, and DistillSpec.

Main entry points::

    from distillspec import load_llamacpp_model, load_model, load_drafter, speculative_generate
    target, tokenizer = load_llamacpp_model("default")             # the 1.5B GGUF, run by llama.cpp
    # or: target, tokenizer = load_model("default", dtype="bfloat16")   (torch, the reference)
    drafter = load_drafter("default", target, tokenizer)            # its measured best draft

Layers (docs/design.md): cli -> eval -> distill -> {models, data} -> engine -> {metrics,
errors, atomic, cpu}; each imports only downward. The names below load on first use
(`distillspec.lazy`): importing the package, or running `distillspec --help`, does not
import torch.
"""

from .errors import DistillSpecError
from .lazy import lazy_exports

_ENGINE_NAMES = ["DraftProposal", "DraftSession", "Drafter", "GenerationResult", "GenerationStats", "Lenience",
                 "ModelDrafter", "PromptLookupDrafter", "SamplingConfig", "StopStrings", "autoregressive_generate",
                 "speculative_generate"]
_ORIGINS = {**dict.fromkeys(_ENGINE_NAMES, ".engine"), "load_model": ".models", "training_texts": ".data.sources",
            "load_llamacpp_model": ".models.llamacpp_models"}
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)


def load_drafter(spec: str, target, target_tokenizer=None, **options):
    """`models.load_drafter`, with training text supplied for `@head=K` truncated heads
    (the default draft of the default target has one). See `models.drafts`."""
    from .data.sources import training_texts  # lazy, as every name here: see the module docstring
    from .models import load_drafter as load_model_drafter

    options.setdefault("head_texts", training_texts)
    return load_model_drafter(spec, target, target_tokenizer, **options)


__all__ = sorted([*_ORIGINS, "DistillSpecError", "load_drafter"])
__version__ = "0.1.0"
