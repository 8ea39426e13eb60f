"""Package attributes imported on first use (PEP 562).

Why: `import distillspec` (and so every `distillspec --help`) used to import torch and
transformers, seconds before argparse could print anything. Packages list what they
export and where it lives; the submodule is imported only when the name is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, origins: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """(`__getattr__`, `__dir__`) for `package`, whose public name N lives in the submodule
    `origins[N]` (relative, e.g. ".loop"). Assign both at the package's module level."""

    def __getattr__(name: str) -> object:
        origin = origins.get(name)
        if origin is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(origin, package), name)

    def __dir__() -> list:
        return sorted(origins)

    return __getattr__, __dir__
