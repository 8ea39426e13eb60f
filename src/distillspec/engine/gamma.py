"""How many tokens to draft per step: fixed, heuristic, or chosen by a cost model.

Pure arithmetic on running statistics; no model code. The speculative loop asks a policy
for the next gamma, then reports what happened in that step (accepted, drafted, timings).
The figures come from `metrics`, the one place they are defined.

Cost model: with per-token acceptance alpha, gamma drafted tokens emit on average
tau(alpha, gamma) tokens per target pass. A step costs gamma draft tokens plus one
verification pass over gamma + 1 tokens, so the speedup over the target alone is the
predicted speedup tau / (gamma c + v(gamma)), with c and v in target decode steps. The
policy measures both in the loop, prefill steps excluded: draft seconds per drafted token,
and verification seconds as a line in gamma, whose intercept (a pass over one token) *is*
a target decode step. Where verifying more tokens costs more (CPUs without wide bf16
units), v grows with gamma and the policy drafts less; where it is flat, it drafts more.

Gamma 0 means a plain target step (predicted speedup exactly 1). The cost model chooses it
when no gamma is predicted to beat the target alone, as with a code draft on chat prompts,
so that speculative decoding is never much slower than not using it; it then probes with
one drafted block after 8, 16, 32, then every 64 target steps to notice when drafting pays
again. Until its costs are measured (the first step's prefill does not count) it drafts
one token, the cheapest block to measure them with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .. import metrics
from ..errors import DistillSpecError


#: The default gamma: the best fixed gamma measured for the default pair (docs/results.md
#: section 0), and where the cost model starts.
DEFAULT_GAMMA = 3


def best_gamma(alpha: float, cost: float, max_gamma: int, verify=lambda gamma: 1.0, min_gamma: int = 1) -> int:
    """The gamma in min_gamma..max_gamma with the highest predicted speedup (smallest on ties).

    cost: c in target decode steps; verify(gamma): v in target decode steps (default 1,
    which makes this the expected speedup tau / (1 + gamma c) of the papers). gamma 0 is
    the target alone: tau = 1, no draft, v = 1, so its predicted speedup is exactly 1.
    """
    def speedup(gamma: int) -> float:
        if gamma == 0:
            return 1.0
        tau = metrics.expected_block_efficiency(alpha, gamma)
        return metrics.predicted_speedup(tau, gamma, cost, verify(gamma))

    return max(range(min_gamma, max_gamma + 1), key=lambda g: (speedup(g), -g))


@dataclass
class StepReport:
    """What one speculative step did, as seen by a gamma policy."""

    drafted: int
    accepted: int
    draft_seconds: float  # time spent drafting this step
    verify_seconds: float  # time of this step's one target pass
    prefill: bool = False  # the first step also fed the prompt to both models
    draft_tokens_fed: int | None = None  # tokens the draft processed (catching up included)


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
class VerifyCostLine:
    """Least-squares line seconds = intercept + slope * gamma over observed verification passes."""

    n: int = 0
    sum_g: float = 0.0
    sum_t: float = 0.0
    sum_gg: float = 0.0
    sum_gt: float = 0.0

    def add(self, gamma: int, seconds: float) -> None:
        self.n += 1
        self.sum_g += gamma
        self.sum_t += seconds
        self.sum_gg += gamma * gamma
        self.sum_gt += gamma * seconds

    def fit(self) -> tuple[float, float] | None:
        """(intercept, slope) with slope >= 0; a flat line while only one gamma was seen."""
        if self.n == 0:
            return None
        mean_g, mean_t = self.sum_g / self.n, self.sum_t / self.n
        spread = self.sum_gg - self.n * mean_g * mean_g
        slope = max(0.0, (self.sum_gt - self.n * mean_g * mean_t) / spread) if spread > 1e-9 else 0.0
        intercept = mean_t - slope * mean_g
        if intercept <= 0.0:  # noisy fit: keep the line through the mean, positive at 0
            slope, intercept = (mean_t * 0.5 / mean_g if mean_g else 0.0), mean_t * 0.5
        return intercept, slope


@dataclass
class CostModelGamma:
    """Pick the gamma maximising the predicted speedup under running estimates.

    alpha is estimated as accepted / (accepted + rejections): under i.i.d. acceptance each
    step is a run of successes ended by one failure (or by the block's end), so this is
    the maximum-likelihood estimate; accepted / drafted would be biased low because tokens
    after the first rejection are never tested. Steps that include the prefill are not
    used for costs.

    memory: each drafted block multiplies the earlier acceptance counts by this, so alpha
    follows the text (code inside a chat reply drafts well, prose after it does not);
    1.0 keeps the whole call. Costs are properties of the machine and are never forgotten.

    min_gamma 0 lets it stop drafting when no gamma pays (see the module docstring); plain
    target steps then also measure the decode step (the verification line at gamma 0).
    """

    gamma: int
    max_gamma: int = 16
    min_gamma: int = 0
    probe_intervals: tuple[int, ...] = (8, 16, 32, 64)
    memory: float = 0.9
    accepted_weight: float = 0.0  # decayed counts behind alpha
    rejections_weight: float = 0.0
    accepted: int = 0
    rejections: int = 0
    draft_seconds: float = 0.0
    drafted: int = 0
    verify: VerifyCostLine = field(default_factory=VerifyCostLine)
    history: list[int] = field(default_factory=list)
    idle_steps: int = 0  # target-only steps since the last drafted block
    probes: int = 0  # drafted blocks since drafting last paid (indexes probe_intervals)

    def alpha(self) -> float | None:
        trials = self.accepted_weight + self.rejections_weight
        return None if trials == 0 else self.accepted_weight / trials

    def decode_step_seconds(self) -> float | None:
        """The fitted verification time at gamma = 0: one target pass over one token."""
        line = self.verify.fit()
        return None if line is None else line[0]

    def cost_ratio(self) -> float | None:
        """c: draft seconds per drafted token / target decode step (prefill excluded; tokens
        the draft fed to catch up count as drafted, see `update`)."""
        per_token = self.draft_seconds / self.drafted if self.drafted else None
        return metrics.cost_ratio(per_token, self.decode_step_seconds())

    def verify_ratio(self, gamma: int) -> float | None:
        """v(gamma): a verification pass over gamma + 1 tokens in target decode steps."""
        line = self.verify.fit()
        return None if line is None else metrics.verify_ratio(line[0] + line[1] * gamma, line[0])

    def next_gamma(self) -> int:
        if self.gamma == 0 and self.idle_steps >= self._probe_interval():
            return self._best(min_gamma=max(1, self.min_gamma))
        return self.gamma

    def _probe_interval(self) -> int:
        return self.probe_intervals[min(self.probes, len(self.probe_intervals) - 1)]

    def _best(self, min_gamma: int) -> int:
        alpha, cost = self.alpha(), self.cost_ratio()
        if alpha is None or cost is None:
            return 1  # measure the costs with the cheapest block
        return best_gamma(alpha, cost, self.max_gamma, self.verify_ratio, min_gamma=min_gamma)

    def update(self, report: StepReport) -> None:
        if report.drafted == 0:  # a target-only step: one decode step, the line's intercept
            if not report.prefill:
                self.verify.add(0, report.verify_seconds)
            self.idle_steps += 1
            return
        rejected = int(report.accepted < report.drafted)
        self.accepted += report.accepted
        self.rejections += rejected
        self.accepted_weight = self.memory * self.accepted_weight + report.accepted
        self.rejections_weight = self.memory * self.rejections_weight + rejected
        if not report.prefill:
            self.draft_seconds += report.draft_seconds
            # steady drafting feeds about one token more than it drafts; after target-only
            # steps a probe's draft first catches up on the skipped text, a one-off that
            # steady drafting does not pay, so those extra tokens count as drafted
            catch_up = max(0, (report.draft_tokens_fed or 0) - report.drafted - 1)
            self.drafted += report.drafted + catch_up
            self.verify.add(report.drafted, report.verify_seconds)
        probing = self.gamma == 0
        self.gamma = self._best(self.min_gamma)
        if self.gamma > 0:
            self.probes = 0
        elif probing:
            self.probes += 1
        self.idle_steps = 0
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
