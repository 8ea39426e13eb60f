"""Accumulating one configuration's measurements over prompts, then turning them into a row.

A prompt contributes its median repeat (by wall-clock time): its tokens, time and, for
our loops, its per-step counters. Steps after the first are pooled separately for the
per-pass costs, because the first step also pays for the prompt (prefill).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from . import metrics
from .runners import BenchConfig, Sample


@dataclass
class Tally:
    config: BenchConfig
    prompts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    # our loops only (HF's generate exposes no counters)
    target_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    drafted_per_position: list[int] = field(default_factory=list)
    gamma_steps: list[int] = field(default_factory=list)
    later_target_seconds: float = 0.0  # target passes after the first (no prefill)
    later_target_passes: int = 0
    later_draft_seconds: float = 0.0  # draft time in steps after the first
    later_drafted_positions: int = 0  # sum of gamma over steps after the first
    working_set_mib: float = 0.0  # peak RSS above the pre-run RSS, warm-up run
    target_log_likelihood: float = 0.0  # sum of log p_target over the output tokens
    scored_tokens: int = 0  # tokens that log-likelihood covers (our loops only)

    def add_prompt(self, repeats: list[Sample]) -> Sample:
        """Count one prompt by its median repeat; returns that repeat."""
        sample = repeats[metrics.median_index([s.seconds for s in repeats])]
        self.prompts += 1
        self.tokens += len(sample.tokens)
        self.seconds += sample.seconds
        self.outputs.append(sample.tokens)
        if sample.time_to_first_token is not None:
            self.first_token_seconds.append(sample.time_to_first_token)
        if sample.stats is not None:
            self._add_stats(sample.stats)
        return sample

    def _add_stats(self, stats) -> None:
        self.target_passes += stats.target_calls
        self.drafted += stats.drafted
        self.accepted += stats.accepted
        self.accepted_per_position = metrics.add_counts(self.accepted_per_position, stats.accepted_per_position)
        self.drafted_per_position = metrics.add_counts(self.drafted_per_position, stats.drafted_per_position)
        self.gamma_steps.extend(stats.gamma_history)
        self.later_target_seconds += sum(stats.target_seconds_per_step[1:])
        self.later_target_passes += len(stats.target_seconds_per_step[1:])
        self.later_draft_seconds += sum(stats.draft_seconds_per_step[1:])
        self.later_drafted_positions += sum(stats.gamma_history[1:])
        self.target_log_likelihood += stats.target_log_likelihood
        self.scored_tokens += stats.new_tokens

    @property
    def seconds_per_token(self) -> float | None:
        return metrics.seconds_per_token(self.seconds, self.tokens)

    @property
    def target_step_seconds(self) -> float | None:
        """Mean time of a target pass after the prefill (one token for the target alone)."""
        return self.later_target_seconds / self.later_target_passes if self.later_target_passes else None

    @property
    def draft_pass_seconds(self) -> float | None:
        """Draft time per drafted position: one forward pass for a model draft, a lookup for
        prompt lookup; so gamma * c is the drafting cost of a step in either case."""
        if not self.later_drafted_positions:
            return None
        return self.later_draft_seconds / self.later_drafted_positions


def make_row(tally: Tally, baseline: Tally, *, greedy: bool) -> dict:
    """The reported numbers of one configuration, against the target alone (`baseline`).

    cost_ratio c = draft pass time / target step time (the target alone's, same run);
    verify_ratio v = our verification pass time / that same target step time.
    """
    config = tally.config
    gamma = metrics.mean_gamma(tally.gamma_steps) if tally.gamma_steps else config.gamma
    tau = metrics.block_efficiency(tally.tokens, tally.target_passes)
    step = baseline.target_step_seconds
    cost = tally.draft_pass_seconds / step if step and tally.draft_pass_seconds is not None else None
    verify = tally.target_step_seconds / step if step and tally.target_step_seconds is not None and tally.drafted else None
    speedup = metrics.speedup_over(baseline.seconds_per_token, tally.seconds_per_token)
    expected = metrics.expected_speedup(tau, gamma, cost) if None not in (tau, gamma, cost) else None
    predicted = metrics.predicted_speedup(tau, gamma, cost, verify) if None not in (tau, gamma, cost, verify) else None
    same = None
    if greedy:
        same_count = sum(a == b for a, b in zip(tally.outputs, baseline.outputs))
        same = metrics.fraction(same_count, min(len(tally.outputs), len(baseline.outputs)))
    return {
        "method": config.method, "draft": config.draft, "gamma": config.gamma, "adaptive": config.adaptive,
        "mean_gamma": gamma if tally.gamma_steps else None, "temperature": config.temperature,
        "lenience": config.lenience, "lenience_function": config.lenience_function if config.lenience else None,
        "label": config.label, "prompts": tally.prompts, "tokens": tally.tokens, "seconds": tally.seconds,
        "tokens_per_second": tally.tokens / tally.seconds if tally.seconds else None,
        "time_to_first_token": statistics.median(tally.first_token_seconds) if tally.first_token_seconds else None,
        "speedup": speedup,
        "acceptance_rate": metrics.acceptance_rate(tally.accepted, tally.drafted),
        "block_efficiency": tau if tally.drafted or config.method == "target" else None,
        "per_position_acceptance": (metrics.per_position_acceptance(tally.accepted_per_position,
                                                                    tally.drafted_per_position)
                                    if tally.drafted else None),
        "cost_ratio": cost, "verify_ratio": verify,
        "expected_speedup": expected, "predicted_speedup": predicted,
        "realised_fraction": speedup / expected if speedup and expected else None,
        "same_tokens_fraction": same,
        "working_set_mib": tally.working_set_mib,
        "target_nll": -tally.target_log_likelihood / tally.scored_tokens if tally.scored_tokens else None,
        "answer_accuracy": None,
    }
