"""Which backend runs a pair when the user leaves it to us ('auto').

Why: on a CPU a GGUF is several times faster in llama.cpp than dequantized into torch, so
llama.cpp is the default for a GGUF target there. But some requests only torch can serve
(another device, an int8 target, a torch linear layout, drafts built from the target's own
torch layers). 'auto' takes llama.cpp whenever it can serve the request and otherwise says
which option kept it on torch, so a user never wonders why a run was slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import DistillSpecError
from .load import PACKAGED_MODELS


def names_gguf(spec: str) -> bool:
    """True when a spec names a GGUF file (a packaged model or a .gguf path), without
    assembling or opening it."""
    return spec in PACKAGED_MODELS or Path(str(spec)).suffix == ".gguf"


def torch_only_draft(spec: str, target: str) -> bool:
    """Drafts only torch runs: made from the target's torch layers (a layer subset, a delta
    folder, the default draft of a target without a GGUF one) or asking for a torch number
    format (@int8, @w8a8)."""
    from .delta import is_delta_folder
    from .drafts import LLAMACPP_PAIRED_DRAFTS, parse_draft_spec
    from .load import canonical_spec

    parsed = parse_draft_spec(spec)
    if parsed.base == "default":
        return canonical_spec(target) not in LLAMACPP_PAIRED_DRAFTS or parsed.quant in ("int8", "w8a8")
    return (parsed.base.startswith("layers:") or is_delta_folder(parsed.base)
            or parsed.quant in ("int8", "w8a8"))


def choose_backend(requested: str, target: str, drafts: list[str], *, device: str = "cpu",
                   target_quant: str = "none", draft_quant: str = "none",
                   linear_layout: str = "auto") -> tuple[str, str]:
    """(backend, reason): `requested` when it is 'torch' or 'llama.cpp', else what 'auto' picks."""
    from .drafts import model_spec_of

    if requested not in ("auto", "torch", "llama.cpp"):
        raise DistillSpecError(f"unknown backend {requested!r}; choose auto, torch or llama.cpp")
    if requested != "auto":
        return requested, "as asked"
    blockers = []
    if not names_gguf(target):
        blockers.append(f"the target {target!r} is not a GGUF")
    if device != "cpu":
        blockers.append(f"--device {device}")
    if target_quant != "none":
        blockers.append(f"--target-quant {target_quant}")
    if draft_quant not in ("none", "auto"):
        blockers.append(f"--draft-quant {draft_quant}")
    if linear_layout not in ("auto", "fastest"):
        blockers.append(f"--linear-layout {linear_layout}")
    blockers += [f"draft {d!r} runs on torch only (built from torch layers or a torch number format)"
                 for d in drafts if (model := model_spec_of(d)) is not None and torch_only_draft(model, target)]
    if not blockers and importlib.util.find_spec("llama_cpp") is None:
        blockers.append("llama-cpp-python is not installed")
    if blockers:
        return "torch", "torch because " + "; ".join(blockers)
    return "llama.cpp", "llama.cpp: a GGUF target on the CPU"
