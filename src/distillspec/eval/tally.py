"""Accumulating one configuration's measurements over prompts, then turning them into a row.

A prompt contributes its median repeat (by wall-clock time): its tokens, time and, for
our loops, its statistics. The statistics of all prompts are pooled by `pool_stats`
(which drops each generation's prefill step from the per-pass costs), and every figure
of the row comes from `metrics`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Collection

from .. import metrics
from ..engine import GenerationStats, pool_stats
from .runners import BenchConfig, Sample


@dataclass
class Tally:
    config: BenchConfig
    prompts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: list[float] = field(default_factory=list)
    first_step_tokens: list[int] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    stats: list[GenerationStats] = field(default_factory=list)  # our loops only (HF exposes none)
    working_set_mib: float = 0.0  # peak RSS above the pre-run RSS, warm-up run
    tokens_past_stop: int = 0  # made after a stop string and cut off (counted neither as output nor speed)

    def add_prompt(self, repeats: list[Sample]) -> Sample:
        """Count one prompt by its median repeat; returns that repeat."""
        sample = repeats[metrics.median_index([s.seconds for s in repeats])]
        self.prompts += 1
        self.tokens += len(sample.tokens)
        self.seconds += sample.seconds
        self.outputs.append(sample.tokens)
        self.tokens_past_stop += sample.tokens_past_stop
        if sample.time_to_first_token is not None:
            self.first_token_seconds.append(sample.time_to_first_token)
        if sample.first_step_tokens is not None:
            self.first_step_tokens.append(sample.first_step_tokens)
        if sample.stats is not None:
            self.stats.append(sample.stats)
        return sample

    @property
    def pooled(self) -> GenerationStats | None:
        return pool_stats(self.stats) if self.stats else None

    @property
    def seconds_per_token(self) -> float | None:
        return metrics.seconds_per_token(self.seconds, self.tokens)

    @property
    def decode_seconds_per_token(self) -> float | None:
        """Per token after each prompt's first step; None unless every prompt timed one."""
        if not self.prompts or len(self.first_token_seconds) != self.prompts \
                or len(self.first_step_tokens) != self.prompts:
            return None
        return metrics.decode_seconds_per_token(self.seconds, sum(self.first_token_seconds), self.tokens,
                                                sum(self.first_step_tokens))


def make_row(tally: Tally, baseline: Tally, *, greedy: bool, end_ids: Collection[int] = ()) -> dict:
    """The reported numbers of one configuration, against the target alone (`baseline`).
    `end_ids`: the model's end tokens, any of which closes a reply (`metrics.same_reply`).

    c = draft seconds per drafted token / the target alone's decode step (same run);
    v = our verification pass / that same decode step. Prefill is excluded from both.
    """
    config, stats, base = tally.config, tally.pooled, baseline.pooled
    decode_step = base.target_pass_seconds if base is not None else None
    drafted = stats is not None and stats.drafted > 0
    gamma = metrics.mean(stats.gamma_history) if drafted else config.gamma
    tau = stats.block_efficiency if stats is not None else None
    cost = metrics.cost_ratio(stats.draft_seconds_per_token, decode_step) if drafted else None
    verify = metrics.verify_ratio(stats.target_pass_seconds, decode_step) if drafted else None
    speedup = metrics.speedup(baseline.seconds_per_token, tally.seconds_per_token)
    expected = metrics.expected_speedup(tau, gamma, cost) if None not in (tau, gamma, cost) else None
    predicted = metrics.predicted_speedup(tau, gamma, cost, verify) if None not in (tau, gamma, cost, verify) else None
    same = None
    if greedy:
        same_count = sum(metrics.same_reply(a, b, end_ids) for a, b in zip(tally.outputs, baseline.outputs))
        same = metrics.fraction(same_count, min(len(tally.outputs), len(baseline.outputs)))
    nll = stats.target_nll_per_token if stats is not None else None
    return {
        "method": config.method, "draft": config.draft, "gamma": config.gamma, "adaptive": config.adaptive,
        "mean_gamma": gamma if drafted else None, "temperature": config.temperature,
        "lenience": config.lenience, "lenience_function": config.lenience_function if config.lenience else None,
        "label": config.label, "prompts": tally.prompts, "tokens": tally.tokens, "seconds": tally.seconds,
        "tokens_per_second": tally.tokens / tally.seconds if tally.seconds else None,
        "time_to_first_token": statistics.median(tally.first_token_seconds) if tally.first_token_seconds else None,
        "speedup": speedup,
        "decode_speedup": metrics.speedup(baseline.decode_seconds_per_token, tally.decode_seconds_per_token),
        "acceptance_rate": stats.acceptance_rate if drafted else None,
        "block_efficiency": tau if drafted or config.method == "target" else None,
        "per_position_acceptance": (metrics.per_position_acceptance(stats.accepted_per_position,
                                                                    stats.drafted_per_position)
                                    if drafted else None),
        "cost_ratio": cost, "verify_ratio": verify,
        "expected_speedup": expected, "predicted_speedup": predicted,
        "realised_fraction": speedup / expected if speedup and expected else None,
        "same_tokens_fraction": same,
        "draft_tokens_processed": stats.draft_tokens_processed if drafted else None,
        "working_set_mib": tally.working_set_mib,
        "tokens_past_stop": tally.tokens_past_stop,
        "target_nll": nll,
        "answer_accuracy": None,
    }
