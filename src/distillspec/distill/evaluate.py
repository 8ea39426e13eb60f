"""How good is a draft for its target: expected and measured acceptance on held-out prompts."""

from __future__ import annotations

import torch

from ..sampling import expected_acceptance
from .data import build_batch
from .steps import TokenizedExample, logits_at, loss_positions, sample_completions


@torch.no_grad()
def heldout_expected_acceptance(target, draft, items: list[TokenizedExample], max_new_tokens: int,
                                eos_ids: set[int], pad_id: int, seed: int, batch_size: int = 8) -> dict:
    """On draft-generated (temperature 1) completions of `items`, token-averaged:

    expected_acceptance = mean of sum_v min(target, draft) = 1 - TVD (sampling at T=1);
    greedy_agreement = how often the draft's argmax equals the target's (greedy decoding).
    """
    torch.manual_seed(seed)
    accepted_mass = agree = tokens = 0.0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [it.prompt_ids for it in chunk]
        completions = sample_completions(draft, prompts, max_new_tokens, 1.0, eos_ids, pad_id)
        batch = build_batch(prompts, completions, pad_id).to(draft.device)
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
