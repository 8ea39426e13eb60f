"""Pure probability math for speculative decoding; no model code lives here.

Terminology (docs/design.md): the *draft* proposes a block of ``gamma`` tokens, the
*target* scores the block in one pass. Each draft token is *accepted* with probability
``min(1, target(y) / draft(y))``; at the first rejection a *recovered* token is sampled
from the residual ``norm(max(0, target - draft))``; when every draft token is accepted a
*bonus* token is sampled from the target's distribution after the block. The emitted
tokens then follow the target's distribution exactly.

Both models' logits go through the same `warp_logits` (temperature, top-k, top-p), so the
distribution being preserved is the *warped* target. Temperature 0 means greedy: the
warped distribution is one-hot on the argmax, and the same rejection rule then accepts a
draft token exactly when it equals the target's argmax.

Randomness always comes from an explicit `torch.Generator`, so a seed fixes the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import DistillSpecError

# Probability mass below which a residual is treated as empty (draft == target there).
_RESIDUAL_EPS = 1e-12
#: temperatures below this are greedy (stored as 0). Dividing logits by a tinier one
#: overflows float32 (1e-40 made every logit infinite and multinomial raised); at 1e-5 a
#: logit gap of 0.001 is already e^100 in probability, so the warped distribution is one-hot
#: but for exact ties, and greedy is what such a temperature asks for.
GREEDY_BELOW = 1e-5


def is_real(value) -> bool:
    """An int or float that is not a bool (NaN fails every comparison the callers make)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution; shared by draft and target so both see one rule.

    temperature 0 is greedy decoding, and so is any temperature below GREEDY_BELOW (stored
    as 0); top_k None / top_p None disable those filters.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not is_real(self.temperature) or not 0 <= self.temperature < float("inf"):
            raise DistillSpecError(
                f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature!r}"
            )
        if self.temperature < GREEDY_BELOW:
            object.__setattr__(self, "temperature", 0.0)
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            raise DistillSpecError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and not (is_real(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise DistillSpecError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def warp_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Turn logits into the probabilities actually sampled from.

    logits: [..., V] -> probs: [..., V] (float32). Greedy gives a one-hot on the argmax.
    top-k keeps the k largest logits (ties at the k-th value are kept); top-p keeps the
    smallest prefix of the sorted distribution whose mass reaches p (at least one token).
    """
    logits = logits.float()
    if config.greedy:
        return torch.nn.functional.one_hot(
            logits.argmax(dim=-1), num_classes=logits.shape[-1]
        ).float()
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        logits = _top_p_filter(logits, config.top_p)
    return torch.softmax(logits, dim=-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the nucleus of mass `top_p`. logits: [..., V]."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p  # the first token always has mass_before 0
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row. probs: [B, V] -> [B] (long). One-hot rows give their argmax."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def next_token(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row and the distribution it came from (None when greedy).

    logits: [B, V] -> (tokens [B] long, probs [B, V] or None). Greedy takes the argmax
    straight from the logits: no softmax and no draw from a one-hot over the vocabulary,
    which at V = 150k costs more than a small model's layer. The verifier treats a None
    distribution as a one-hot on the token.
    """
    if config.greedy:
        return logits.argmax(dim=-1), None
    probs = warp_logits(logits, config)
    return sample_tokens(probs, generator), probs


# ----------------------------------------------------------------------------- lenience

LenienceFn = Callable[[torch.Tensor, float], torch.Tensor]

#: DistillSpec-style lenience functions f(target_prob, epsilon). Each satisfies
#: f(p, 1) = p (exactly lossless) and grows as epsilon falls, so acceptance rises.
LENIENCE_FUNCTIONS: dict[str, LenienceFn] = {
    "linear": lambda p, eps: p / eps,
    "square": lambda p, eps: p / (eps * eps),
    "power": lambda p, eps: p.pow(eps),
}


@dataclass(frozen=True)
class Lenience:
    """Lossy acceptance: accept a draft token y with prob min(1, f(target(y), eps) / draft(y)).

    epsilon = 1 is exactly the lossless rule; smaller epsilon accepts more draft tokens
    and moves the output away from the target's distribution.
    """

    epsilon: float
    function: str = "linear"

    def __post_init__(self) -> None:
        if not is_real(self.epsilon) or not (0.0 < self.epsilon <= 1.0):
            raise DistillSpecError(f"lenience epsilon must be in (0, 1], got {self.epsilon!r}")
        if self.function not in LENIENCE_FUNCTIONS:
            raise DistillSpecError(
                f"unknown lenience function {self.function!r}; "
                f"choose one of {sorted(LENIENCE_FUNCTIONS)}"
            )

    def apply(self, target_probs: torch.Tensor) -> torch.Tensor:
        return LENIENCE_FUNCTIONS[self.function](target_probs, float(self.epsilon))


def acceptance_probability(
    target_at_draft: torch.Tensor,
    draft_at_draft: torch.Tensor,
    lenience: Lenience | None = None,
) -> torch.Tensor:
    """min(1, f(target(y)) / draft(y)) for each drafted token y.

    target_at_draft, draft_at_draft: [B, G] probabilities of the drafted tokens.
    """
    numerator = target_at_draft if lenience is None else lenience.apply(target_at_draft)
    ratio = numerator / draft_at_draft.clamp_min(torch.finfo(draft_at_draft.dtype).tiny)
    return ratio.clamp(max=1.0)


# ----------------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """Outcome of verifying one block per row.

    num_accepted: [B] draft tokens accepted (a prefix of the block).
    next_tokens: [B] the recovered token (when num_accepted < G) or the bonus token.
    """

    num_accepted: torch.Tensor
    next_tokens: torch.Tensor


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> VerifyResult:
    """Greedy verification: accept the prefix of draft tokens equal to the target's argmax.

    draft_tokens: [B, G] long; target_logits: [B, G + 1, V] raw target logits at each block
    position plus the one after the block. The next token is the target's argmax at the
    first mismatch (the recovered token) or after the block (the bonus token). This is the
    exact rule's limit at temperature 0, with no randomness and no one-hot vectors.
    """
    batch, gamma = draft_tokens.shape
    if target_logits.shape[:2] != (batch, gamma + 1):
        raise ValueError(
            f"target_logits has shape {tuple(target_logits.shape)}; expected [{batch}, {gamma + 1}, V]"
        )
    target_tokens = target_logits.argmax(dim=-1)  # [B, G + 1]
    matches = draft_tokens == target_tokens[:, :gamma]
    num_accepted = matches.long().cumprod(dim=-1).sum(dim=-1)  # prefix length, [B]
    next_tokens = target_tokens.gather(1, num_accepted.unsqueeze(-1)).squeeze(-1)
    return VerifyResult(num_accepted=num_accepted, next_tokens=next_tokens)


def verify_block(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
    lenience: Lenience | None = None,
) -> VerifyResult:
    """Exact (or, with `lenience`, lossy) rejection sampling of a drafted block.

    draft_tokens: [B, G] long; G may be 0 (then only a target token is drawn).
    draft_probs: [B, G, V] the (warped) draft distributions the tokens were drawn from,
        or None for a deterministic drafter (a one-hot on each drafted token).
    target_probs: [B, G + 1, V] the (warped) target distributions at each block position
        plus the one after the block.
    """
    batch, gamma = draft_tokens.shape
    if target_probs.shape[:2] != (batch, gamma + 1):
        raise ValueError(
            f"target_probs has shape {tuple(target_probs.shape)}; expected [{batch}, {gamma + 1}, V]"
        )
    rows = torch.arange(batch, device=draft_tokens.device)
    target_at_draft = target_probs[:, :gamma].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    if draft_probs is None:
        draft_at_draft = torch.ones_like(target_at_draft)
    else:
        draft_at_draft = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    accept_prob = acceptance_probability(target_at_draft, draft_at_draft, lenience)
    uniforms = torch.rand(
        (batch, gamma), generator=generator, device=accept_prob.device, dtype=accept_prob.dtype
    )
    accepted = uniforms < accept_prob  # [B, G]
    num_accepted = accepted.long().cumprod(dim=-1).sum(dim=-1)  # prefix length

    target_next = target_probs[rows, num_accepted]  # [B, V]
    draft_next = _draft_probs_at(draft_tokens, draft_probs, num_accepted, target_probs.shape[-1])
    next_probs = residual_distribution(target_next, draft_next)
    return VerifyResult(num_accepted=num_accepted, next_tokens=sample_tokens(next_probs, generator))


def _draft_probs_at(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    position: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    """The draft distribution at `position` per row, zeros where position == G (bonus).

    draft_tokens: [B, G]; draft_probs: [B, G, V] or None (one-hot); position: [B] -> [B, V].
    """
    batch, gamma = draft_tokens.shape
    out = torch.zeros(batch, vocab_size, device=draft_tokens.device)
    if gamma == 0:
        return out
    inside = position < gamma
    rows = torch.arange(batch, device=draft_tokens.device)[inside]
    pos = position[inside]
    if draft_probs is None:
        out[rows, draft_tokens[rows, pos]] = 1.0
    else:
        out[rows] = draft_probs[rows, pos].float()
    return out


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(0, target - draft)) per row; the target itself where that mass vanishes.

    target_probs, draft_probs: [B, V] -> [B, V]. The mass vanishes only where draft covers
    target everywhere (e.g. equal distributions), where a rejection cannot happen in exact
    arithmetic; falling back to the target keeps that case well-defined.
    """
    residual = (target_probs - draft_probs).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    empty = mass <= _RESIDUAL_EPS
    safe = torch.where(empty, target_probs, residual / mass.clamp_min(_RESIDUAL_EPS))
    return safe


def expected_acceptance(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """beta = sum_v min(target, draft) = 1 - TVD: the chance one draft token is accepted.

    target_probs, draft_probs: [..., V] -> [...].
    """
    return torch.minimum(target_probs, draft_probs).sum(dim=-1)


def token_log_likelihoods(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the model's own (temperature 1, unfiltered) distribution.

    logits: [n, vocab]; tokens: [n] -> [n]. This is the quality yardstick of lossy
    decoding: exact sampling keeps its expectation at the target's, leniency lowers it.
    """
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
