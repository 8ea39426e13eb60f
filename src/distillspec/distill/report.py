"""Held-out evaluation of a draft with the real engine: what a user of the draft will see."""

from __future__ import annotations

import statistics

from ..decoding import autoregressive_generate, speculative_generate
from .steps import TokenizedExample


def evaluate_drafter(target, drafter, items: list[TokenizedExample], *, gamma: int, temperature: float,
                     max_new_tokens: int, eos_ids: set[int], vocab_size: int | None = None, seed: int = 0,
                     baseline: bool = True) -> dict:
    """Speculative decoding on each prompt (and the target alone, for the speed ratio).

    acceptance_rate and block_efficiency pool tokens over prompts; speedup is the ratio of
    total wall-clock times for the same prompts, measured alternately in one process.
    """
    drafted = accepted = emitted = passes = 0
    spec_seconds = base_seconds = 0.0
    verify_ratios = []
    same = 0
    for i, item in enumerate(items):
        common = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i,
                      eos_token_id=sorted(eos_ids))
        spec = speculative_generate(target, drafter, item.prompt_ids, gamma=gamma,
                                    tokenizer_vocab_size=vocab_size, **common)
        stats = spec.stats
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        emitted, passes = emitted + stats.new_tokens, passes + stats.target_calls
        spec_seconds += stats.total_seconds
        if stats.draft_to_verify_ratio is not None:
            verify_ratios.append(stats.draft_to_verify_ratio)
        if baseline:
            base = autoregressive_generate(target, item.prompt_ids, **common)
            base_seconds += base.stats.total_seconds * stats.new_tokens / max(1, base.stats.new_tokens)
            same += int(base.tokens == spec.tokens)
    result = {
        "prompts": len(items), "gamma": gamma, "temperature": temperature,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "block_efficiency": emitted / passes if passes else 0.0,
        "tokens": emitted, "tokens_per_second": emitted / spec_seconds if spec_seconds else 0.0,
        "draft_to_verify_ratio": statistics.median(verify_ratios) if verify_ratios else None,
    }
    if baseline:
        result["target_tokens_per_second"] = emitted / base_seconds if base_seconds else 0.0
        result["speedup"] = base_seconds / spec_seconds if spec_seconds else 0.0
        result["same_tokens_fraction"] = same / len(items) if items else 0.0
    return result

