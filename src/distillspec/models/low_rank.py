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


def int8_factors(u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Factors stored at 8 bits, one symmetric scale per singular direction (a column of u,
    a row of v), so a weak direction keeps its own precision beside a strong one.

    Why: a shipped draft's changes are rebuilt and then quantized to 4 bits by llama.cpp;
    an int8 factor's rounding (1/254 of a direction's largest entry) is far below that,
    and it halves the package against float16.

    u: [O, r], v: [r, I] -> {"u": [O, r] int8, "u_scale": [r], "v": [r, I] int8, "v_scale": [r]}."""
    u_scale = _direction_scales(u.t())
    v_scale = _direction_scales(v)
    return {"u": _rounded(u / u_scale[None, :]), "u_scale": u_scale,
            "v": _rounded(v / v_scale[:, None]), "v_scale": v_scale}


def float_factors(stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`int8_factors`'s inverse: (u [O, r], v [r, I]) float32."""
    return (stored["u"].float() * stored["u_scale"].float()[None, :],
            stored["v"].float() * stored["v_scale"].float()[:, None])


def _direction_scales(rows: torch.Tensor) -> torch.Tensor:
    """rows: [r, n] -> [r] float32: each row's largest magnitude over 127 (never zero)."""
    return rows.detach().float().abs().amax(dim=1).clamp_min(1e-30) / 127.0


def _rounded(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.float()).clamp(-127, 127).to(torch.int8).contiguous()
