"""Devices and dtypes named by the user, checked before anything slow.

Why a module of its own: it needs torch only, so `generate` refuses `--device bogus` or
`--device cuda` on a CPU-only torch before transformers is imported or a model converted
(both gave tracebacks: a RuntimeError and an AssertionError).
"""

from __future__ import annotations

import torch

from ..choices import DTYPE_NAMES
from ..errors import DistillSpecError


def check_dtype_name(dtype: str) -> None:
    """Refuse a dtype name no torch model loads in (checked on every backend, so a typo is
    never silently ignored where the dtype does not apply)."""
    if str(dtype).lower() not in DTYPE_NAMES:
        raise DistillSpecError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16")


def check_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names, or a clear error when it is not one or is not here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DistillSpecError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N, mps or another torch "
                               "device type") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DistillSpecError(f"device {str(device)!r}: {build}; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise DistillSpecError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DistillSpecError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    return parsed
