"""Benchmark arithmetic, pure: counts and seconds in, the reported numbers out.

Vocabulary as in DESIGN.md. Times are per configuration, summed over prompts after
taking the median over repeats of each prompt, so a slow outlier repeat cannot move a
ratio. Ratios against the target alone always use the target-alone run of the same
benchmark (same process, prompts and settings).
"""

from __future__ import annotations

from typing import Sequence


def acceptance_rate(accepted: int, drafted: int) -> float | None:
    """alpha = accepted / drafted; None when nothing was drafted."""
    return accepted / drafted if drafted else None


def block_efficiency(emitted: int, target_passes: int) -> float | None:
    """tau = emitted tokens / target passes (1 <= tau <= gamma + 1)."""
    return emitted / target_passes if target_passes else None


def per_position_acceptance(accepted: Sequence[int], drafted: Sequence[int]) -> list[float | None]:
    """P(draft position i accepted | it was drafted), i = 0 .. max gamma - 1.

    accepted[i], drafted[i]: how many blocks accepted / drafted a token at position i.
    """
    width = max(len(accepted), len(drafted))
    acc = list(accepted) + [0] * (width - len(accepted))
    dra = list(drafted) + [0] * (width - len(drafted))
    if any(a > d for a, d in zip(acc, dra)):
        raise ValueError(f"more accepted than drafted at some position: {acc} vs {dra}")
    return [a / d if d else None for a, d in zip(acc, dra)]


def add_counts(total: list[int], counts: Sequence[int]) -> list[int]:
    """Element-wise sum of two per-position count lists of possibly different lengths."""
    width = max(len(total), len(counts))
    return [(total[i] if i < len(total) else 0) + (counts[i] if i < len(counts) else 0) for i in range(width)]


def expected_speedup(tau: float, gamma: float, cost_ratio: float) -> float:
    """tau / (1 + gamma * c): the speedup if a verification pass cost one target step."""
    return tau / (1.0 + gamma * cost_ratio)


def predicted_speedup(tau: float, gamma: float, cost_ratio: float, verify_ratio: float) -> float:
    """tau / (gamma * c + v), with v the measured cost of a verification pass in target steps.

    Where verifying gamma + 1 tokens costs more than one step (v > 1, as on CPUs without
    fast bf16 matrix units), this is what the loop can reach; expected_speedup cannot.
    """
    return tau / (gamma * cost_ratio + verify_ratio)


def seconds_per_token(seconds: float, tokens: int) -> float | None:
    return seconds / tokens if tokens else None


def speedup_over(baseline_seconds_per_token: float | None, seconds_per_token_: float | None) -> float | None:
    """Wall-clock speedup: how many times faster per emitted token than the baseline."""
    if not baseline_seconds_per_token or not seconds_per_token_:
        return None
    return baseline_seconds_per_token / seconds_per_token_


def mean_gamma(gamma_history: Sequence[int]) -> float | None:
    """The average gamma actually drafted (adaptive policies change it per step)."""
    return sum(gamma_history) / len(gamma_history) if gamma_history else None


def fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def median_index(values: Sequence[float]) -> int:
    """Index of the (lower) median value, so the repeat it names can speak for the prompt."""
    if not values:
        raise ValueError("no values to take the median of")
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]
