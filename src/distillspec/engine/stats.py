"""Counters and timings of one generation, and pooled over many.

Every figure is derived through `metrics`, the one definition. Costs pool the steps after
the first: the first step of a generation also fed the prompt to both models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import zip_longest

from .. import metrics


@dataclass
class GenerationStats:
    """What one generation did (docs/design.md has the vocabulary)."""

    new_tokens: int = 0
    target_calls: int = 0  # target forward passes
    draft_calls: int = 0  # draft model forward passes, counted by the draft's cache
    draft_tokens_processed: int = 0  # tokens fed to the draft model (prompt prefill included)
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # accepted at draft pos i
    drafted_per_position: list[int] = field(default_factory=list)  # drafted at draft pos i
    accepted_length_histogram: list[int] = field(default_factory=list)  # steps accepting n
    gamma_history: list[int] = field(default_factory=list)  # gamma asked for, per step
    # per step (per token for the autoregressive loop); the first step includes the prefill
    drafted_per_step: list[int] = field(default_factory=list)
    looked_up_per_step: list[int] = field(default_factory=list)  # of those, drafted by prompt lookup
    draft_seconds_per_step: list[float] = field(default_factory=list)
    target_seconds_per_step: list[float] = field(default_factory=list)
    draft_passes_per_step: list[int] = field(default_factory=list)
    # sum over emitted tokens of log p_target(token), T=1 and unfiltered; None unless asked
    target_log_likelihood: float | None = None
    scoring_seconds: float = 0.0  # time spent on that score, kept out of every clock
    total_seconds: float = 0.0
    time_to_first_token: float = 0.0  # until the first step ended (prompt prefill included)
    first_step_tokens: int = 0  # tokens that first step emitted (up to gamma + 1)
    stopped_by: str = "max_new_tokens"  # or "eos", or "stop" (a stop string)
    prompt_tokens_kept: int = 0  # prompt positions the target kept from its call before (a server slot)
    # leading entries of the per-step lists that include a prompt prefill (0 once pooled)
    prefill_steps: int = 1

    @property
    def draft_seconds(self) -> float:
        return sum(self.draft_seconds_per_step)

    @property
    def target_seconds(self) -> float:
        return sum(self.target_seconds_per_step)

    @property
    def acceptance_rate(self) -> float | None:
        return metrics.acceptance_rate(self.accepted, self.drafted)

    @property
    def block_efficiency(self) -> float | None:
        return metrics.block_efficiency(self.new_tokens, self.target_calls)

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else None

    @property
    def seconds_per_token(self) -> float | None:
        return metrics.seconds_per_token(self.total_seconds, self.new_tokens)

    @property
    def target_nll_per_token(self) -> float | None:
        """Mean negative log-likelihood of the output under the target (lower: more target-like)."""
        if self.target_log_likelihood is None or not self.new_tokens:
            return None
        return -self.target_log_likelihood / self.new_tokens

    @property
    def looked_up(self) -> int:
        """Tokens drafted by prompt lookup beside a draft model (`LookupFirstDrafter`)."""
        return sum(self.looked_up_per_step)

    @property
    def draft_seconds_per_token(self) -> float | None:
        """Draft seconds per token the draft model drafted, prefill step excluded (c's
        numerator; a lookup block's tokens cost next to nothing and do not count)."""
        skip = self.prefill_steps
        steps = zip_longest(self.drafted_per_step[skip:], self.draft_seconds_per_step[skip:],
                            self.looked_up_per_step[skip:], fillvalue=0)
        model_steps = [(drafted, seconds) for drafted, seconds, looked_up in steps if not looked_up]
        drafted = sum(d for d, _ in model_steps)
        return sum(s for _, s in model_steps) / drafted if drafted else None

    @property
    def target_pass_seconds(self) -> float | None:
        """Mean target pass after the prefill: a decode step for the target alone (c's
        denominator), a verification pass for speculative decoding (v's numerator)."""
        return metrics.mean(self.target_seconds_per_step[self.prefill_steps:])

    def record_step(self, drafted: int, accepted: int, gamma: int, draft_passes: int,
                    draft_seconds: float, target_seconds: float, looked_up: bool = False) -> None:
        """One speculative step; looked_up: its block came from prompt lookup beside a draft model."""
        self.steps += 1
        self.target_calls += 1
        self.drafted += drafted
        self.accepted += accepted
        self.draft_calls += draft_passes
        self.gamma_history.append(gamma)
        self.drafted_per_step.append(drafted)
        self.looked_up_per_step.append(drafted if looked_up else 0)
        self.draft_passes_per_step.append(draft_passes)
        self.draft_seconds_per_step.append(draft_seconds)
        self.target_seconds_per_step.append(target_seconds)
        _bump(self.drafted_per_position, range(drafted))
        _bump(self.accepted_per_position, range(accepted))
        _bump(self.accepted_length_histogram, [accepted])

    def record_decode_step(self, target_seconds: float) -> None:
        """One pass of the target alone (the autoregressive reference)."""
        self.target_calls += 1
        self.target_seconds_per_step.append(target_seconds)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("draft_seconds", "target_seconds", "acceptance_rate", "block_efficiency",
                     "tokens_per_second", "target_nll_per_token", "draft_seconds_per_token", "looked_up",
                     "target_pass_seconds"):
            out[name] = getattr(self, name)
        return out


def _bump(counts: list[int], indices) -> None:
    for i in indices:
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += 1


def pool_stats(many: list[GenerationStats]) -> GenerationStats:
    """Statistics of several generations as one: counts add, per-step lists concatenate
    with each generation's prefill steps dropped (so pooled costs exclude every prefill)."""
    pooled = GenerationStats(stopped_by="pooled", prefill_steps=0)
    first_steps_seconds = []
    for stats in many:
        pooled.new_tokens += stats.new_tokens
        pooled.target_calls += stats.target_calls
        pooled.draft_calls += stats.draft_calls
        pooled.draft_tokens_processed += stats.draft_tokens_processed
        pooled.prompt_tokens_kept += stats.prompt_tokens_kept
        pooled.steps += stats.steps
        pooled.drafted += stats.drafted
        pooled.accepted += stats.accepted
        pooled.accepted_per_position = metrics.add_counts(pooled.accepted_per_position, stats.accepted_per_position)
        pooled.drafted_per_position = metrics.add_counts(pooled.drafted_per_position, stats.drafted_per_position)
        pooled.accepted_length_histogram = metrics.add_counts(pooled.accepted_length_histogram,
                                                              stats.accepted_length_histogram)
        pooled.gamma_history += stats.gamma_history
        skip = stats.prefill_steps
        pooled.drafted_per_step += stats.drafted_per_step[skip:]
        pooled.looked_up_per_step += stats.looked_up_per_step[skip:]
        pooled.draft_seconds_per_step += stats.draft_seconds_per_step[skip:]
        pooled.target_seconds_per_step += stats.target_seconds_per_step[skip:]
        pooled.draft_passes_per_step += stats.draft_passes_per_step[skip:]
        first_steps_seconds.append(stats.time_to_first_token)
        if stats.target_log_likelihood is not None:
            pooled.target_log_likelihood = (pooled.target_log_likelihood or 0.0) + stats.target_log_likelihood
        pooled.scoring_seconds += stats.scoring_seconds
        pooled.total_seconds += stats.total_seconds
    pooled.time_to_first_token = metrics.mean(first_steps_seconds) or 0.0
    return pooled
