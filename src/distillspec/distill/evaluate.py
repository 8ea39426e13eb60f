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
from .batch import Batch, build_batch
from .teachers import TorchTeacher, as_teacher, is_teacher


@dataclass
class EvalText:
    """Held-out prompts with sampled completions, batched for scoring.

    target_logits: per batch, the target's logits at its completion tokens ([N_b, V]
    float32), once `score_text` has kept them; then measuring another draft on this text
    costs no target pass (a study or a layer-cut probe measures many drafts on one text).
    """

    batches: list[Batch]
    target_logits: list[torch.Tensor] | None = None


def _masked_logits(model, batch: Batch) -> torch.Tensor | None:
    """`model`'s (a torch model's or a teacher's) float32 logits at the completion tokens of
    `batch`: [N, V] (None: no tokens)."""
    return as_teacher(model).completion_logits(batch)


@torch.no_grad()
def score_text(target, text: EvalText) -> EvalText:
    """`text` with the target's logits kept (memory: completion tokens x vocabulary x 4 bytes,
    e.g. 0.3 GB for 512 tokens of Qwen2.5's 151,936)."""
    return EvalText(text.batches, [_masked_logits(target, batch) for batch in text.batches])


@torch.no_grad()
def sample_eval_text(model, items: list[TokenizedExample], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                     seed: int, batch_size: int = 8) -> EvalText:
    """Completions of `items` by `model` at temperature 1, seeded (HF generate draws from the
    global generator, so it runs inside a forked RNG state that is restored afterwards); the
    target's can be reused across evaluations because the target never changes. Products in
    nn.Linear's own order (not weight-left): the text is a fixed reference, and another order
    rounds differently, which at T = 1 changes some samples and so every table's tokens.
    model: a torch model or a teacher (a llama.cpp target draws from a generator of `seed`)."""
    batches = []
    teacher = model if is_teacher(model) else TorchTeacher(model, weight_left=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(items), batch_size):
            prompts = [it.prompt_ids for it in items[start:start + batch_size]]
            completions = teacher.sample(prompts, max_new_tokens, 1.0, eos_ids, pad_id, generator=generator)
            batches.append(build_batch(prompts, completions, pad_id))
    return EvalText(batches)


def restrict_to_head(logits: torch.Tensor, head_token_ids) -> torch.Tensor:
    """logits: [N, V] -> the same with every id outside a truncated head at -inf (probability 0,
    as the engine's truncated-head draft gives them)."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[torch.as_tensor(head_token_ids, dtype=torch.long, device=logits.device)] = True
    return logits.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def acceptance_on_text(target, draft, text: EvalText, head_token_ids=None) -> dict:
    """Token-averaged over the completions of `text`:

    expected_acceptance = mean of sum_v min(target, draft) = 1 - TVD (sampling at T=1);
    greedy_agreement = how often the draft's argmax equals the target's (greedy decoding).
    Uses the target logits `text` keeps (`score_text`), else runs the target.
    head_token_ids: the draft's truncated head, if it has one (ids outside it get probability 0).
    """
    accepted_mass = agree = tokens = 0.0
    kept = text.target_logits or [None] * len(text.batches)
    for batch, target_logits in zip(text.batches, kept):
        draft_logits = _masked_logits(draft, batch)
        if draft_logits is None:
            continue
        if head_token_ids is not None:
            draft_logits = restrict_to_head(draft_logits, head_token_ids)
        if target_logits is None:
            target_logits = _masked_logits(target, batch)
        target_logits = target_logits.to(draft_logits.device)
        accepted_mass += expected_acceptance(target_logits.softmax(-1), draft_logits.softmax(-1)).sum().item()
        agree += (target_logits.argmax(-1) == draft_logits.argmax(-1)).sum().item()
        tokens += draft_logits.shape[0]
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
