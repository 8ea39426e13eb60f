"""Models on disk and drafts built from them: loading (GGUF, folders, named packaged
models), layer-subset and delta drafts, and `load_drafter(spec, target)`."""

from .drafts import load_drafter, prepare_pair, resolve_paired_draft
from .load import load_model

__all__ = ["load_drafter", "load_model", "prepare_pair", "resolve_paired_draft"]
