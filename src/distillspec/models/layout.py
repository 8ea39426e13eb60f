"""Linear layers computed weight-first, for CPUs whose BLAS is slow on short, wide inputs.

A verification pass multiplies a few rows (gamma + 1 tokens) by every weight matrix. On
some CPUs (seen on a 2-core AMD EPYC with AVX2 and torch's MKL) `x @ W.T` with 2-9 rows
runs on a slow path that costs 3-5x one row, while the same product taken as
`(W @ x.T).T` stays close to the one-row cost. That ratio is exactly the verify cost v of
speculative decoding, so the layout decides whether it pays. `benchmarks/pass_costs.py`
measures both on a given machine; the choice is the user's (`--linear-layout`), since it
depends on the CPU and its BLAS.

Only the order of operations changes: results agree with `nn.Linear` to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DistillSpecError

LAYOUT_CHOICES = ("default", "weight-left")


class WeightLeftLinear(nn.Module):
    """nn.Linear's result as (W @ x.T).T; shares the original layer's parameters.

    x: [..., in_features] -> [..., out_features].
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # [out, in], the same Parameter (no copy)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.matmul(self.weight, flat.T).T  # [n, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def apply_layout(model: nn.Module, layout: str | None) -> nn.Module:
    """Swap every nn.Linear of `model` for a WeightLeftLinear (layout 'weight-left')."""
    if layout in (None, "default"):
        return model
    if layout != "weight-left":
        raise DistillSpecError(f"unknown linear layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, WeightLeftLinear(child))
    return model
