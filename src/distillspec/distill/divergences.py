"""Divergences between the target's and the draft's next-token distributions.

Pure functions on logits; no model code. Each `*_per_token` function maps
target_logits, draft_logits: [..., V] to a divergence per position [...]; `sequence_loss`
masks out prompt and padding positions, averages over each sequence's completion tokens,
then over sequences (DistillSpec's token-level, per-sequence-averaged objective).

Conventions (target = teacher P, draft = student Q):
- forward KL  = KL(P || Q) = sum P (log P - log Q)   (mode-covering)
- reverse KL  = KL(Q || P)                          (mode-seeking)
- JSD(beta)   = [beta KL(P || M) + (1 - beta) KL(Q || M)] / (beta (1 - beta)),
  M = beta P + (1 - beta) Q. Divided by beta (1 - beta) so that it is continuous on
  [0, 1] with the KL limits: beta -> 0 gives forward KL, beta -> 1 reverse KL; at
  beta = 0.5 it is 4 x the usual Jensen-Shannon divergence, symmetric in P and Q.
- TVD         = 0.5 sum |P - Q|; 1 - TVD is the expected acceptance rate of one draft
  token, so minimising TVD targets speculative decoding directly.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import DistillSpecError

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dim, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def forward_kl_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    return _kl(_log_probs(target_logits, temperature), _log_probs(draft_logits, temperature))


def reverse_kl_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    return _kl(_log_probs(draft_logits, temperature), _log_probs(target_logits, temperature))


def jsd_per_token(target_logits, draft_logits, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    check_beta(beta)
    if beta == 0.0:
        return forward_kl_per_token(target_logits, draft_logits, temperature)
    if beta == 1.0:
        return reverse_kl_per_token(target_logits, draft_logits, temperature)
    log_p = _log_probs(target_logits, temperature)
    log_q = _log_probs(draft_logits, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
    jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return jsd / (beta * (1.0 - beta))


def tvd_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    p = _log_probs(target_logits, temperature).exp()
    q = _log_probs(draft_logits, temperature).exp()
    return 0.5 * (p - q).abs().sum(dim=-1)


def check_beta(beta: float) -> None:
    if not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise DistillSpecError(f"JSD beta must be in [0, 1], got {beta!r}")


def divergence_fn(name: str, beta: float = 0.5) -> Callable[..., torch.Tensor]:
    """The per-token function for a divergence name ('fkl', 'rkl', 'jsd', 'tvd')."""
    if name == "fkl":
        return forward_kl_per_token
    if name == "rkl":
        return reverse_kl_per_token
    if name == "jsd":
        check_beta(beta)
        return lambda t, d, temperature=1.0: jsd_per_token(t, d, beta, temperature)
    if name == "tvd":
        return tvd_per_token
    raise DistillSpecError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")


def sequence_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the mean over each sequence's masked-in tokens.

    per_token: [B, T] divergences; mask: [B, T] (1 = completion token that counts).
    Sequences with no counted token are left out; if none counts the loss is 0.
    """
    mask = mask.to(per_token.dtype)
    tokens = mask.sum(dim=-1)  # [B]
    has_tokens = tokens > 0
    if not has_tokens.any():
        return per_token.sum() * 0.0  # keeps the graph, gradient zero
    per_sequence = (per_token * mask).sum(dim=-1) / tokens.clamp_min(1.0)
    return per_sequence[has_tokens].mean()


def cross_entropy_per_token(draft_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised baseline: -log Q(label). draft_logits: [B, T, V]; labels: [B, T] -> [B, T]."""
    log_q = F.log_softmax(draft_logits.float(), dim=-1)
    return -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
