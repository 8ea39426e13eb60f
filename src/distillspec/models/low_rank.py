"""Best low-rank approximations of weight changes (pure math, no model plumbing).

Why: a distilled layer cut changes every weight of its blocks, but by a change that is
close to low-rank; storing each change's leading singular directions ships the draft in a
few percent of its size (`gguf_delta`).
"""

from __future__ import annotations

import torch


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-`rank` approximation of `delta` in Frobenius norm (Eckart-Young), as
    two factors with the singular values split evenly between them, so neither factor's
    range grows with the change's scale more than the other's.

    delta: [O, I]; returns (u [O, r], v [r, I]) with u @ v ~ delta, r = min(rank, O, I)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(delta.dtype), (root[:, None] * vh[:r]).to(delta.dtype)


def kept_fraction(delta: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """How much of the change's squared norm the factors keep: 1 - |delta - u v|^2 / |delta|^2
    (1.0 for a zero change). delta: [O, I]; u: [O, r]; v: [r, I]."""
    total = float(delta.double().square().sum())
    if total == 0.0:
        return 1.0
    residual = float((delta.double() - u.double() @ v.double()).square().sum())
    return 1.0 - residual / total
