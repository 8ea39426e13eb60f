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

from ..choices import DIVERGENCES
from ..errors import DistillSpecError



def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dim, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def forward_kl_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    return divergence_from_log_probs("fkl", _log_probs(target_logits, temperature),
                                     _log_probs(draft_logits, temperature))


def reverse_kl_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    return divergence_from_log_probs("rkl", _log_probs(target_logits, temperature),
                                     _log_probs(draft_logits, temperature))


def jsd_per_token(target_logits, draft_logits, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    check_beta(beta)
    return divergence_from_log_probs("jsd", _log_probs(target_logits, temperature),
                                     _log_probs(draft_logits, temperature), beta)


def tvd_per_token(target_logits, draft_logits, temperature: float = 1.0) -> torch.Tensor:
    return divergence_from_log_probs("tvd", _log_probs(target_logits, temperature),
                                     _log_probs(draft_logits, temperature))


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


# ----------------------------------------------------------------------------- sparse teacher
#
# Scoring every sequence with the target once and keeping only its top-k log-probabilities
# (k ~ 64) lets epochs and divergence comparisons reuse a cache on disk instead of running
# the target again. The teacher is then known on k tokens plus the mass of the rest, so
# both distributions are compared on k + 1 bins: the k tokens and "everything else" (the
# draft's mass outside those k tokens). Every divergence here is an f-divergence, so by
# the data-processing inequality the binned value is at most the dense one, and equal
# when the teacher puts no mass outside its top k. Forward KL, JSD and TVD are close to
# dense once the top k holds nearly all the teacher's mass; reverse KL is not, since it
# weighs the teacher's tail by wherever the draft puts mass.

#: smallest probability given to an empty "everything else" bin (keeps logs finite)
_EMPTY_BIN = 1e-12


def sparse_teacher(target_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k tokens and their log-probabilities at temperature 1.

    target_logits: [..., V] -> (ids [..., k] long, log_probs [..., k] float32).
    """
    if not 1 <= k <= target_logits.shape[-1]:
        raise DistillSpecError(f"top-k must be in 1..{target_logits.shape[-1]}, got {k}")
    log_p = F.log_softmax(target_logits.float(), dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    return ids, values


def _with_rest_bin(log_top: torch.Tensor) -> torch.Tensor:
    """[..., k] log-probabilities -> [..., k + 1], the last bin holding the remaining mass."""
    rest = (1.0 - log_top.exp().sum(dim=-1, keepdim=True)).clamp_min(_EMPTY_BIN)
    return torch.cat([log_top, rest.log()], dim=-1)


def binned_log_probs(teacher_ids: torch.Tensor, teacher_log_probs: torch.Tensor,
                     draft_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and draft on the teacher's k tokens plus one bin for the rest.

    teacher_ids, teacher_log_probs: [..., k]; draft_logits: [..., V]
    -> (log_p [..., k + 1], log_q [..., k + 1]); gradients flow into draft_logits.
    """
    log_q_all = F.log_softmax(draft_logits.float(), dim=-1)
    log_q_top = log_q_all.gather(-1, teacher_ids)
    return _with_rest_bin(teacher_log_probs.float()), _with_rest_bin(log_q_top)


def divergence_from_log_probs(name: str, log_p: torch.Tensor, log_q: torch.Tensor,
                              beta: float = 0.5) -> torch.Tensor:
    """A divergence of P (teacher) from Q (draft) given both as log-probabilities [..., N]."""
    if name == "fkl" or (name == "jsd" and beta == 0.0):
        return _kl(log_p, log_q)
    if name == "rkl" or (name == "jsd" and beta == 1.0):
        return _kl(log_q, log_p)
    if name == "jsd":
        check_beta(beta)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
        return (beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)) / (beta * (1.0 - beta))
    if name == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    raise DistillSpecError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")


def sparse_divergence_per_token(name: str, teacher_ids: torch.Tensor, teacher_log_probs: torch.Tensor,
                                draft_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """A divergence against a top-k teacher, per position: [..., k], [..., k], [..., V] -> [...]."""
    log_p, log_q = binned_log_probs(teacher_ids, teacher_log_probs, draft_logits)
    return divergence_from_log_probs(name, log_p, log_q, beta)
