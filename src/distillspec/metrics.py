"""The one definition of every reported figure; pure arithmetic on counts and seconds.

Vocabulary (docs/design.md): a *step* drafts gamma tokens and runs one target pass over
them. Every command (generate --compare, bench, eval-draft, study, the cost-model gamma,
the trainer's evaluation) reports through these functions, so a figure means the same
thing wherever it is printed:

- acceptance rate  alpha = accepted / drafted
- block efficiency tau   = emitted tokens / target passes        (1 <= tau <= gamma + 1)
- cost ratio       c     = draft seconds per drafted token / target decode step seconds
- verify ratio     v     = verification pass seconds / target decode step seconds
- expected speedup       = tau / (1 + gamma c)   (the papers' formula: assumes v = 1)
- predicted speedup      = tau / (gamma c + v)   (what the loop can reach when v > 1)
- speedup                = baseline seconds per token / seconds per token (wall clock)

Prefill is excluded from c and v everywhere: the first step of a generation also pays for
the prompt, so per-pass costs pool the steps after the first.

This module imports nothing from the package, so the engine, training and evaluation
layers can all use it without depending on each other.
"""

from __future__ import annotations

from typing import Collection, Sequence


def acceptance_rate(accepted: int, drafted: int) -> float | None:
    """alpha = accepted / drafted; None when nothing was drafted."""
    return accepted / drafted if drafted else None


def block_efficiency(emitted: int, target_passes: int) -> float | None:
    """tau = emitted tokens / target passes (the prefill pass emits the first token)."""
    return emitted / target_passes if target_passes else None


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """tau expected for i.i.d. per-token acceptance alpha: (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def cost_ratio(draft_seconds_per_token: float | None, decode_step_seconds: float | None) -> float | None:
    """c = draft seconds per drafted token / seconds of one target decode step (one token)."""
    if draft_seconds_per_token is None or not decode_step_seconds:
        return None
    return draft_seconds_per_token / decode_step_seconds


def verify_ratio(verify_pass_seconds: float | None, decode_step_seconds: float | None) -> float | None:
    """v = seconds of a verification pass (gamma + 1 tokens) / seconds of a decode step."""
    if verify_pass_seconds is None or not decode_step_seconds:
        return None
    return verify_pass_seconds / decode_step_seconds


def expected_speedup(tau: float, gamma: float, cost: float) -> float:
    """tau / (1 + gamma c): the speedup if a verification pass cost one target step."""
    return tau / (1.0 + gamma * cost)


def predicted_speedup(tau: float, gamma: float, cost: float, verify: float) -> float:
    """tau / (gamma c + v): the speedup with the measured verification cost v."""
    return tau / (gamma * cost + verify)


def seconds_per_token(seconds: float, tokens: int) -> float | None:
    return seconds / tokens if tokens else None


def decode_seconds_per_token(seconds: float, first_step_seconds: float, tokens: int,
                             first_step_tokens: int) -> float | None:
    """Seconds per token after each generation's first step (the prompt prefill, and the
    draft's, live there). Robust where replies are short and prefill would dominate."""
    return seconds_per_token(seconds - first_step_seconds, tokens - first_step_tokens)


def speedup(baseline_seconds_per_token: float | None, seconds_per_token_: float | None) -> float | None:
    """Wall-clock speedup: how many times faster per emitted token than the baseline."""
    if not baseline_seconds_per_token or not seconds_per_token_:
        return None
    return baseline_seconds_per_token / seconds_per_token_


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


def add_counts(total: Sequence[int], counts: Sequence[int]) -> list[int]:
    """Element-wise sum of two per-position count lists of possibly different lengths."""
    width = max(len(total), len(counts))
    return [(total[i] if i < len(total) else 0) + (counts[i] if i < len(counts) else 0) for i in range(width)]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def same_reply(a: Sequence[int], b: Sequence[int], end_ids: Collection[int] = ()) -> bool:
    """Whether two replies are the same tokens, an end token closing both counting as one:
    llama.cpp's own tools print no end token, so their reply can say only that it ended,
    not with which of the model's end tokens."""
    if a and b and a[-1] in end_ids and b[-1] in end_ids:
        return list(a[:-1]) == list(b[:-1])
    return list(a) == list(b)


def median_index(values: Sequence[float]) -> int:
    """Index of the (lower) median value, so the repeat it names can speak for the prompt."""
    if not values:
        raise ValueError("no values to take the median of")
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]
