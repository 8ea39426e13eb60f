"""How many tokens to draft per step: fixed, heuristic, or chosen by a cost model.

Pure arithmetic on running statistics; no model code. The speculative loop asks a policy
for the next gamma, then reports what happened in that step (accepted, drafted, timings).

Cost model (Leviathan et al.; DistillSpec): with per-token acceptance alpha, a block of
gamma drafted tokens emits on average tau = (1 - alpha^(gamma+1)) / (1 - alpha) tokens per
target pass, and costs 1 + gamma * c target-forward units, c being the draft/target cost
ratio. The expected speedup over the target alone is tau / (1 + gamma * c).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .errors import DistillSpecError


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """tau: expected tokens emitted per target pass for i.i.d. acceptance alpha."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    """tau / (1 + gamma * c): expected wall-clock speedup over the target alone."""
    return expected_block_efficiency(alpha, gamma) / (1.0 + gamma * cost_ratio)


def best_gamma(alpha: float, cost_ratio: float, max_gamma: int) -> int:
    """The gamma in 1..max_gamma with the highest expected speedup (smallest on ties)."""
    return max(
        range(1, max_gamma + 1),
        key=lambda g: (expected_speedup(alpha, g, cost_ratio), -g),
    )


@dataclass
class StepReport:
    """What one speculative step did, as seen by a gamma policy."""

    drafted: int
    accepted: int
    draft_seconds: float  # time spent drafting this step
    draft_forward_passes: int
    target_seconds: float  # time of this step's one target pass


class GammaPolicy(Protocol):
    def next_gamma(self) -> int: ...

    def update(self, report: StepReport) -> None: ...


@dataclass
class FixedGamma:
    """Always the same gamma."""

    gamma: int

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report: StepReport) -> None:
        pass


@dataclass
class HeuristicGamma:
    """Grow gamma by 1 after a fully accepted block, shrink by 1 after a rejection."""

    gamma: int
    max_gamma: int = 16
    min_gamma: int = 1

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report: StepReport) -> None:
        if report.drafted == 0:
            return
        if report.accepted == report.drafted:
            self.gamma = min(self.gamma + 1, self.max_gamma)
        else:
            self.gamma = max(self.gamma - 1, self.min_gamma)


@dataclass
class CostModelGamma:
    """Pick the gamma that maximises tau / (1 + gamma * c) under running estimates.

    alpha is estimated as accepted / (accepted + rejections): under i.i.d. acceptance
    each step is a run of successes ended by one failure (or by the block's end), so
    this is the maximum-likelihood estimate; accepted / drafted would be biased low
    because tokens after the first rejection are never tested. c is the ratio of the
    mean time of one draft forward pass to the mean time of one target verification
    pass (the pass the controller actually pays per step).
    """

    gamma: int
    max_gamma: int = 16
    accepted: int = 0
    rejections: int = 0
    draft_seconds: float = 0.0
    draft_passes: int = 0
    target_seconds: float = 0.0
    target_passes: int = 0
    history: list[int] = field(default_factory=list)

    def alpha(self) -> float | None:
        trials = self.accepted + self.rejections
        return None if trials == 0 else self.accepted / trials

    def draft_to_verify_ratio(self) -> float | None:
        if self.target_passes == 0 or self.target_seconds <= 0:
            return None
        if self.draft_passes == 0:
            return 0.0
        per_draft = self.draft_seconds / self.draft_passes
        per_target = self.target_seconds / self.target_passes
        return per_draft / per_target

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report: StepReport) -> None:
        self.accepted += report.accepted
        self.rejections += int(report.accepted < report.drafted)
        self.draft_seconds += report.draft_seconds
        self.draft_passes += report.draft_forward_passes
        self.target_seconds += report.target_seconds
        self.target_passes += 1
        alpha, cost = self.alpha(), self.draft_to_verify_ratio()
        if alpha is not None and cost is not None:
            self.gamma = best_gamma(alpha, cost, self.max_gamma)
        self.history.append(self.gamma)


ADAPTIVE_GAMMA_CHOICES = ("heuristic", "cost-model")


def make_gamma_policy(gamma: int, adaptive: str | bool | None, max_gamma: int | None = None):
    """Build the policy named by `adaptive` (None/False: fixed; True means 'cost-model')."""
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise DistillSpecError(f"gamma must be an integer >= 1, got {gamma!r}")
    max_gamma = max_gamma if max_gamma is not None else max(2 * gamma, 8)
    if adaptive in (None, False, "none", "fixed"):
        return FixedGamma(gamma)
    if adaptive is True or adaptive == "cost-model":
        return CostModelGamma(gamma, max_gamma=max_gamma)
    if adaptive == "heuristic":
        return HeuristicGamma(gamma, max_gamma=max_gamma)
    if hasattr(adaptive, "next_gamma") and hasattr(adaptive, "update"):
        return adaptive
    raise DistillSpecError(
        f"unknown adaptive_gamma {adaptive!r}; choose None, {', '.join(ADAPTIVE_GAMMA_CHOICES)}"
    )
