"""Held-out evaluation of a draft with the real engine: what a user of the draft will see.

Each prompt runs speculatively and, for speed, with the target alone, alternating in one
process; statistics pool through `pool_stats` and every figure comes from `metrics`.
"""

from __future__ import annotations

from .. import metrics
from ..data.tokenize import TokenizedExample
from ..engine import autoregressive_generate, pool_stats, speculative_generate


def evaluate_drafter(target, drafter, items: list[TokenizedExample], *, gamma: int, temperature: float,
                     max_new_tokens: int, eos_ids: set[int], vocab_size: int | None = None, seed: int = 0,
                     baseline: bool = True) -> dict:
    """alpha, tau, c and the speedup over the target alone on `items` (pooled over prompts)."""
    speculative, alone, same = [], [], 0
    for i, item in enumerate(items):
        common = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i,
                      eos_token_id=sorted(eos_ids))
        spec = speculative_generate(target, drafter, item.prompt_ids, gamma=gamma, tokenizer_vocab_size=vocab_size,
                                    **common)
        speculative.append(spec.stats)
        if baseline:
            base = autoregressive_generate(target, item.prompt_ids, **common)
            alone.append(base.stats)
            same += int(base.tokens == spec.tokens)
    stats = pool_stats(speculative)
    result = {
        "prompts": len(items), "gamma": gamma, "temperature": temperature,
        "acceptance_rate": stats.acceptance_rate or 0.0,
        "block_efficiency": stats.block_efficiency or 0.0,
        "tokens": stats.new_tokens, "tokens_per_second": stats.tokens_per_second or 0.0,
    }
    if baseline:
        base = pool_stats(alone)
        decode_step = base.target_pass_seconds
        result.update({
            "target_tokens_per_second": base.tokens_per_second or 0.0,
            "speedup": metrics.speedup(base.seconds_per_token, stats.seconds_per_token),
            "cost_ratio": metrics.cost_ratio(stats.draft_seconds_per_token, decode_step),
            "verify_ratio": metrics.verify_ratio(stats.target_pass_seconds, decode_step),
            "same_tokens_fraction": metrics.fraction(same, len(items)),
        })
    return result
