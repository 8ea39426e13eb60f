"""Models on disk and drafts built from them: loading (GGUF, folders, named packaged
models), layer-subset and delta drafts, and `load_drafter(spec, target)`. Names load on
first use (`distillspec.lazy`)."""

from ..lazy import lazy_exports

_ORIGINS = {**dict.fromkeys(["load_drafter", "prepare_pair", "resolve_paired_draft"], ".drafts"), "load_model": ".load"}
__getattr__, __dir__ = lazy_exports(__name__, _ORIGINS)
__all__ = sorted(_ORIGINS)
