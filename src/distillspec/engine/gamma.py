"""How many tokens to draft per step: fixed, heuristic, a ramp, or chosen by a cost model.

Pure arithmetic on running statistics; no model code. The speculative loop asks a policy
for the next gamma, then reports what happened in that step (accepted, drafted, timings).
The figures come from `metrics`, the one place they are defined.

Cost model: with per-token acceptance alpha, gamma drafted tokens emit on average
tau(alpha, gamma) tokens per target pass. A step costs gamma draft tokens plus one
verification pass over gamma + 1 tokens, so the speedup over the target alone is the
predicted speedup tau / (gamma c + v(gamma)), with c and v in target decode steps. The
policy measures both in the loop, prefill steps excluded: draft seconds per drafted token,
and the seconds of a verification pass at each gamma (`VerifyCosts`), whose value at gamma 0
(a pass over one token) *is* a target decode step. Where verifying more tokens costs more
(CPUs without wide bf16 units; int8 kernels that work in blocks of rows), v grows with gamma
and the policy drafts less; where it is flat, it drafts more. It drafts at most twice the
largest gamma measured so far, never a gamma whose cost is only a guess from far below.

Gamma 0 means a plain target step (predicted speedup exactly 1). The cost model chooses it
when no gamma is predicted to beat the target alone, as with a code draft on chat prompts,
so that speculative decoding is never much slower than not using it; it then probes with
one drafted block after 8, 16, 32, then every 64 target steps to notice when drafting pays
again, unless even a draft right 95% of the time would gain less than PROBE_WORTH. Until
its costs are measured (the first step's prefill does not count) it drafts one token, the
cheapest block to measure them with.

Ramp (`RampGamma`, for prompt lookup): one token, doubled after every fully accepted block,
back to one after a rejection. A lookup's proposals are right in long runs or not at all,
which the cost model's one acceptance rate per position does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .. import metrics
from ..errors import DistillSpecError


#: The default gamma: the best fixed gamma measured for the default pair (docs/benchmarks.md),
#: and where the cost model starts.
DEFAULT_GAMMA = 3


def speedup_at(alpha: float, gamma: int, cost: float, verify: float) -> float:
    """Predicted speedup tau / (gamma c + v) of blocks of `gamma` for a draft right `alpha`
    of the time (i.i.d.), c and v in target decode steps. gamma 0 is the target alone:
    tau = 1, no draft, v = 1, so exactly 1."""
    if gamma == 0:
        return 1.0
    return metrics.predicted_speedup(metrics.expected_block_efficiency(alpha, gamma), gamma, cost, verify)


def best_gamma(alpha: float, cost: float, max_gamma: int, verify=lambda gamma: 1.0, min_gamma: int = 1) -> int:
    """The gamma in min_gamma..max_gamma with the highest predicted speedup (smallest on ties).

    cost: c in target decode steps; verify(gamma): v in target decode steps (default 1,
    which makes this the expected speedup tau / (1 + gamma c) of the papers).
    """
    return max(range(min_gamma, max_gamma + 1), key=lambda g: (speedup_at(alpha, g, cost, verify(g)), -g))


@dataclass
class StepReport:
    """What one speculative step did, as seen by a gamma policy."""

    drafted: int
    accepted: int
    draft_seconds: float  # time spent drafting this step
    verify_seconds: float  # time of this step's one target pass
    prefill: bool = False  # the pass also read a prompt (the first step's, or another call's): not a cost
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
class RampGamma:
    """Probe with `gamma` tokens (the start); after a fully accepted block double γ, up to
    `max_gamma`; after a rejection go back to the start.

    Why: prompt lookup's proposals are right in long runs (text the reply copies: an edited
    function, a quoted passage) and wrong elsewhere. Where a pass over a few tokens costs
    nearly as many decode steps and a pass over 16 or 32 costs about half a step per token
    (a CPU's llama.cpp: docs/prompt-lookup.md), only long accepted blocks pay. Doubling
    reaches them within a few steps of a copy's start, and a wrong proposal outside a copy
    costs a block of the start's size.
    """

    gamma: int = 1
    max_gamma: int = 32

    def __post_init__(self):
        self.start = self.gamma

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report: StepReport) -> None:
        if report.drafted == 0:  # nothing proposed (no match): the block size waits for one
            return
        if report.accepted == report.drafted:
            self.gamma = min(2 * self.gamma, self.max_gamma)
        else:
            self.gamma = self.start


@dataclass
class VerifyCosts:
    """Seconds of one verification pass by gamma: the mean of the passes seen at that gamma,
    and straight lines between and beyond the gammas seen.

    Why not one least-squares line: on some CPUs a pass's cost is a step function of its
    rows. torch's int8 kernel works on rows in blocks of four, so a pass over 2-4 tokens
    costs about the same and a fifth token costs a jump. A line through such points is
    wrong at every gamma, and worst at gamma 0, the decode step that every ratio is measured
    in: one long pass pulls the intercept low, drafting looks dear and the policy stops.
    """

    sums: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    #: gamma 0 extrapolated below the smallest gamma seen is kept at least this share of
    #: that gamma's mean (noise in two close means can make the slope steep)
    floor_share: float = 0.5

    def add(self, gamma: int, seconds: float) -> None:
        self.sums[gamma] = self.sums.get(gamma, 0.0) + seconds
        self.counts[gamma] = self.counts.get(gamma, 0) + 1

    def seen(self) -> list[int]:
        return sorted(self.counts)

    def mean(self, gamma: int) -> float:
        return self.sums[gamma] / self.counts[gamma]

    def seconds(self, gamma: int) -> float | None:
        """Measured mean at gamma, else interpolated between the nearest gammas seen, else
        extended from the two nearest (flat or rising above the largest; at least
        `floor_share` of the smallest below it); None before any pass."""
        seen = self.seen()
        if not seen:
            return None
        if gamma in self.counts:
            return self.mean(gamma)
        below = [g for g in seen if g < gamma]
        above = [g for g in seen if g > gamma]
        if below and above:
            low, high = below[-1], above[0]
            share = (gamma - low) / (high - low)
            return self.mean(low) + share * (self.mean(high) - self.mean(low))
        if below:  # beyond the largest gamma seen
            return self.mean(below[-1]) + self._slope(below[-2:]) * (gamma - below[-1])
        nearest = above[0]  # below the smallest gamma seen (gamma 0: the decode step)
        extended = self.mean(nearest) - self._slope(above[:2]) * (nearest - gamma)
        return max(extended, self.floor_share * self.mean(nearest))

    def _slope(self, gammas: list[int]) -> float:
        """Seconds per extra drafted token between two gammas seen; 0 with one (flat)."""
        if len(gammas) < 2:
            return 0.0
        low, high = gammas
        return max(0.0, (self.mean(high) - self.mean(low)) / (high - low))

    def largest_drafted(self) -> int:
        """The largest gamma >= 1 seen, 0 if none: the policy explores up to twice it."""
        return max((g for g in self.counts if g > 0), default=0)


@dataclass(frozen=True)
class CostPrior:
    """Pass costs of this pair on this machine, timed before the call (`models.pass_costs`).

    draft_token_seconds: one draft decode step. verify_seconds: target pass seconds by gamma
    (the pass covers gamma + 1 tokens; gamma 0 is the decode step). The policy uses their
    ratios to the decode step, which hold as the context grows while the seconds do not,
    wherever the call has not measured its own.
    """

    draft_token_seconds: float
    verify_seconds: dict

    def cost_ratio(self) -> float:
        return self.draft_token_seconds / self.verify_seconds[0]

    def largest_timed(self) -> int:
        """The largest gamma whose verification pass was timed: beyond it v is extended."""
        return max(self.verify_seconds)

    def verify_ratio(self, gamma: int) -> float:
        """v(gamma) as timed; beyond the largest gamma timed, extended along the last two
        timings (passes grow with their tokens; flat if they did not)."""
        timed = sorted(self.verify_seconds)
        if gamma in self.verify_seconds:
            seconds = self.verify_seconds[gamma]
        else:
            last = timed[-1]
            before = timed[-2] if len(timed) > 1 else last
            slope = max(0.0, self.verify_seconds[last] - self.verify_seconds[before]) / max(1, last - before)
            seconds = self.verify_seconds[last] + slope * (gamma - last)
        return seconds / self.verify_seconds[0]


#: the acceptance rate a draft is credited with when asking whether drafting could pay at
#: all: above any measured on real pairs here, below 1, where arbitrarily long blocks of
#: always-accepted tokens would make any draft cheaper than a target step look worth it
BEST_CASE_ALPHA = 0.95


#: the acceptance rate the first block is bet on, before the call has measured any: about
#: the default draft's on chat (docs/cheap-draft.md); code drafts run higher, cut drafts lower
TYPICAL_ALPHA = 0.7


#: the best-case predicted speedup (a draft right BEST_CASE_ALPHA of the time) that a draft
#: must offer before the policy tries it at all. Trying is not free: each probe first feeds
#: the draft all the text it skipped, and a lucky probe token makes alpha look high for a
#: few losing blocks. A cut draft whose best case was 1.06x lost 11% to its probes on code
#: (docs/cheap-draft.md, section 7), so a best case must clear that to be worth a try.
PROBE_WORTH = 1.1


def best_case_speedup(cost: float, verify, max_gamma: int, alpha: float = BEST_CASE_ALPHA) -> tuple[int, float]:
    """(gamma, predicted speedup) of the best gamma in 1..max_gamma for a draft right `alpha`
    of the time at these costs (c and v(gamma) in target decode steps): the ceiling a
    machine puts on any draft of this cost, told to the user beside the timed costs."""
    gamma = best_gamma(alpha, cost, max_gamma, verify)
    return gamma, speedup_at(alpha, gamma, cost, verify(gamma))


def drafting_can_pay(cost: float | None, verify, max_gamma: int, alpha: float = BEST_CASE_ALPHA,
                     worth: float = PROBE_WORTH) -> bool:
    """Whether some gamma would beat the target alone by `worth` with a draft this accurate
    (the best case): False means no draft of this cost can pay enough on this machine to
    repay probing for a better alpha (each probe also feeds the draft every token it
    skipped). Unknown costs (None) could pay."""
    if cost is None:
        return True
    for gamma in range(1, max_gamma + 1):
        ratio = verify(gamma)
        if ratio is None or speedup_at(alpha, gamma, cost, ratio) > worth:
            return True
    return False


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
    target steps then also measure the decode step (the verification cost at gamma 0). Once
    the costs say that no gamma could pay even with a draft right BEST_CASE_ALPHA of the
    time, it stops probing.

    prior: pass costs timed before the call (`CostPrior`). With them the policy knows c and
    v from the first step: where drafting cannot pay it never drafts, and elsewhere it does
    not spend its first blocks measuring. Its first block, drafted before any acceptance is
    known, is at most `gamma` long and the best bet for a draft right TYPICAL_ALPHA of the
    time; where only a draft far better than that could pay (a cheap but poorly aligned
    draft where verification is dear), it starts with target steps and probes after 8, so a
    short reply never pays the draft's prompt prefill and a doubtful first block.
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
    verify: VerifyCosts = field(default_factory=VerifyCosts)
    history: list[int] = field(default_factory=list)
    idle_steps: int = 0  # target-only steps since the last drafted block
    probes: int = 0  # drafted blocks since drafting last paid (indexes probe_intervals)
    prior: CostPrior | None = None

    def __post_init__(self) -> None:
        if self.prior is None:
            return
        if not self.can_pay():
            self.gamma = 0
        else:
            first_block = max(self.gamma, self.min_gamma)
            self.gamma = best_gamma(TYPICAL_ALPHA, self.cost_ratio(), first_block, self.verify_ratio,
                                    min_gamma=self.min_gamma)

    def can_pay(self) -> bool:
        """Whether a draft right BEST_CASE_ALPHA of the time would pay by PROBE_WORTH at a gamma
        whose verification has been timed (the prior's) or measured: beyond those, v is a
        straight line from two short passes, and long blocks at the best-case alpha would
        make almost any draft look worth a probe."""
        known = max(self.verify.largest_drafted(), self.prior.largest_timed() if self.prior else 0)
        return drafting_can_pay(self.cost_ratio(), self.verify_ratio, min(self.max_gamma, max(1, known)))

    def alpha(self) -> float | None:
        trials = self.accepted_weight + self.rejections_weight
        return None if trials == 0 else self.accepted_weight / trials

    def decode_step_seconds(self) -> float | None:
        """One target pass over one token: measured on target-only steps, else the
        verification costs extended to gamma = 0."""
        return self.verify.seconds(0)

    def cost_ratio(self) -> float | None:
        """c: draft seconds per drafted token / target decode step (prefill excluded; tokens
        the draft fed to catch up count as drafted, see `update`); the prior's before the
        call has drafted."""
        if not self.drafted and self.prior is not None:
            return self.prior.cost_ratio()
        per_token = self.draft_seconds / self.drafted if self.drafted else None
        return metrics.cost_ratio(per_token, self.decode_step_seconds())

    def verify_ratio(self, gamma: int) -> float | None:
        """v(gamma): a verification pass over gamma + 1 tokens in target decode steps, as
        measured in the call; the prior's where the call has measured no pass of that size."""
        if gamma and gamma not in self.verify.counts and self.prior is not None:
            return self.prior.verify_ratio(gamma)
        if self.decode_step_seconds() is None and self.prior is not None:
            return self.prior.verify_ratio(gamma)
        return metrics.verify_ratio(self.verify.seconds(gamma), self.decode_step_seconds())

    def next_gamma(self) -> int:
        if self.gamma == 0 and self.idle_steps >= self._probe_interval() and self.can_pay():
            return self._best(min_gamma=max(1, self.min_gamma))
        return self.gamma

    def _probe_interval(self) -> int:
        return self.probe_intervals[min(self.probes, len(self.probe_intervals) - 1)]

    def _best(self, min_gamma: int) -> int:
        alpha, cost = self.alpha(), self.cost_ratio()
        if alpha is None or cost is None:
            return 1  # measure the costs with the cheapest block
        # at most twice the largest gamma measured: a cost guessed far beyond what was seen
        # (flat after one gamma) would send the first blocks to max_gamma
        explored = min(self.max_gamma, max(2 * self.verify.largest_drafted(), 1, min_gamma))
        return best_gamma(alpha, cost, explored, self.verify_ratio, min_gamma=min_gamma)

    def update(self, report: StepReport) -> None:
        if report.drafted == 0:  # a target-only step: one decode step, the cost at gamma 0
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


ADAPTIVE_GAMMA_CHOICES = ("heuristic", "cost-model", "ramp")

#: the longest block the ramp policy verifies unless max_gamma says otherwise
RAMP_MAX_GAMMA = 32


def resolve_adaptive(adaptive: str, prompt_lookup: bool) -> str:
    """The commands' 'auto' policy: the ramp for prompt lookup, the cost model for a draft
    model, the best measured for each (docs/prompt-lookup.md); any other name as given."""
    if adaptive != "auto":
        return adaptive
    return "ramp" if prompt_lookup else "cost-model"


def make_gamma_policy(gamma: int, adaptive: str | bool | None, max_gamma: int | None = None,
                      prior: CostPrior | None = None):
    """Build the policy named by `adaptive` (None/False: fixed; True means 'cost-model';
    `prior`: pass costs timed before the call, for the cost model). A fixed gamma of 0 never
    drafts: the target alone through the same loop (a server's or a benchmark's baseline)."""
    fixed = adaptive in (None, False, "none", "fixed")
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < (0 if fixed else 1):
        raise DistillSpecError(f"gamma must be an integer >= 1 (or 0 with a fixed gamma: the target alone), "
                               f"got {gamma!r}")
    if adaptive == "ramp":  # starts at one token whatever `gamma` says: a probe costs least
        return RampGamma(1, max_gamma=max_gamma if max_gamma is not None else RAMP_MAX_GAMMA)
    max_gamma = max_gamma if max_gamma is not None else max(2 * gamma, 8)
    if fixed:
        return FixedGamma(gamma)
    if adaptive is True or adaptive == "cost-model":
        return CostModelGamma(gamma, max_gamma=max_gamma, prior=prior)
    if adaptive == "heuristic":
        return HeuristicGamma(gamma, max_gamma=max_gamma)
    if hasattr(adaptive, "next_gamma") and hasattr(adaptive, "update"):
        return adaptive
    raise DistillSpecError(
        f"unknown adaptive_gamma {adaptive!r}; choose None, {', '.join(ADAPTIVE_GAMMA_CHOICES)}"
    )
