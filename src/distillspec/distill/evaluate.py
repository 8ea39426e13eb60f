"""How good is a draft for its target, measured during and after training.

Speculative decoding scores the draft on prefixes that follow the *target's*
distribution (every accepted block is target text), so expected acceptance is measured on
target-generated completions. The same number on the draft's own completions is kept as
a diagnostic: a draft that collapses onto easy, repetitive text of its own (reverse KL on
its own samples can do this) scores high there and near zero in real decoding.
`engine_acceptance` runs the real engine for alpha and tau, pooled through `pool_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tokenize import TokenizedExample
from ..engine import pool_stats, speculative_generate
from ..engine.sampling import expected_acceptance
from .batches import Batch, build_batch, logits_at, loss_positions, sample_completions


@dataclass
class EvalText:
    """Held-out prompts with sampled completions, batched for scoring."""

    batches: list[Batch]


@torch.no_grad()
def sample_eval_text(model, items: list[TokenizedExample], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                     seed: int, batch_size: int = 8) -> EvalText:
    """Completions of `items` by `model` at temperature 1, seeded (HF generate draws from the
    global generator, so it runs inside a forked RNG state that is restored afterwards); the
    target's can be reused across evaluations because the target never changes."""
    batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(items), batch_size):
            prompts = [it.prompt_ids for it in items[start:start + batch_size]]
            completions = sample_completions(model, prompts, max_new_tokens, 1.0, eos_ids, pad_id)
            batches.append(build_batch(prompts, completions, pad_id))
    return EvalText(batches)


@torch.no_grad()
def acceptance_on_text(target, draft, text: EvalText) -> dict:
    """Token-averaged over the completions of `text`:

    expected_acceptance = mean of sum_v min(target, draft) = 1 - TVD (sampling at T=1);
    greedy_agreement = how often the draft's argmax equals the target's (greedy decoding).
    """
    accepted_mass = agree = tokens = 0.0
    for batch in text.batches:
        batch = batch.to(draft.device)
        positions = loss_positions(batch)
        if positions.numel() == 0:
            continue
        mask = batch.loss_mask[:, positions].bool()
        target_logits = logits_at(target, batch, positions).float()[mask]
        draft_logits = logits_at(draft, batch, positions).float()[mask]
        accepted_mass += expected_acceptance(target_logits.softmax(-1), draft_logits.softmax(-1)).sum().item()
        agree += (target_logits.argmax(-1) == draft_logits.argmax(-1)).sum().item()
        tokens += mask.sum().item()
    if tokens == 0:
        return {"expected_acceptance": 0.0, "greedy_agreement": 0.0, "eval_tokens": 0}
    return {"expected_acceptance": accepted_mass / tokens, "greedy_agreement": agree / tokens,
            "eval_tokens": int(tokens)}


def heldout_expected_acceptance(target, draft, items: list[TokenizedExample], max_new_tokens: int,
                                eos_ids: set[int], pad_id: int, seed: int,
                                target_text: EvalText | None = None) -> dict:
    """Acceptance on target-generated text (the number that predicts decoding), plus the
    same on the draft's own samples under `*_on_draft_text` keys.

    target_text: the target's completions of `items`, if already sampled (pass it to
    avoid regenerating them at every evaluation).
    """
    if target_text is None:
        target_text = sample_eval_text(target, items, max_new_tokens, eos_ids, pad_id, seed)
    metrics = acceptance_on_text(target, draft, target_text)
    own = acceptance_on_text(target, draft, sample_eval_text(draft, items, max_new_tokens, eos_ids, pad_id, seed))
    metrics.update({"expected_acceptance_on_draft_text": own["expected_acceptance"],
                    "greedy_agreement_on_draft_text": own["greedy_agreement"]})
    return metrics


def engine_acceptance(target, drafter, items: list[TokenizedExample], *, gamma: int, temperature: float,
                      max_new_tokens: int, eos_ids: set[int], vocab_size: int | None = None,
                      seed: int = 0) -> dict:
    """alpha and tau of real speculative decoding on `items`, pooled over prompts (no timing)."""
    stats = pool_stats([
        speculative_generate(target, drafter, item.prompt_ids, gamma=gamma, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed + i, eos_token_id=sorted(eos_ids),
                             tokenizer_vocab_size=vocab_size).stats
        for i, item in enumerate(items)])
    return {"acceptance_rate": stats.acceptance_rate or 0.0, "block_efficiency": stats.block_efficiency or 0.0}
