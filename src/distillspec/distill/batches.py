"""The model-facing pieces of one distillation step: prompts in, loss out.

Kept apart from the training loop so evaluation and tests use the very same code.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel

from ..data.sources import check_on_policy_fraction
from ..data.tokenize import TokenizedExample
from ..models.layout import few_row_products_weight_left
from .divergences import (cross_entropy_per_token, divergence_fn, sequence_loss, sparse_divergence_per_token,
                          sparse_teacher)
from .teacher_cache import CachedTeacher, TeacherCache, teacher_rows


@dataclass
class Batch:
    """Right-padded prompt+completion sequences for one training micro-batch.

    input_ids, attention_mask: [B, T]. loss_mask: [B, T]; 1 at positions whose *next*
    token is a completion token (up to and including EOS), i.e. the positions where the
    draft would be asked to propose that token. Prompt and padding positions are 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))


def truncate_completion(tokens: list[int], eos_ids: set[int], pad_id: int | None = None) -> list[int]:
    """Cut after the first EOS (kept: the draft must learn to stop) and drop padding."""
    out = []
    for token in tokens:
        if token in eos_ids:
            out.append(token)
            break
        if pad_id is not None and token == pad_id:
            break
        out.append(token)
    return out


def build_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> Batch:
    rows = [p + c for p, c in zip(prompts, completions)]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        row = prompt + completion
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        if completion:
            loss_mask[i, len(prompt) - 1 : len(row) - 1] = 1
    return Batch(input_ids, attention_mask, loss_mask)


def choose_on_policy(count: int, fraction: float, generator: torch.Generator) -> list[bool]:
    """Per example, whether its completion is drawn on-policy (by the draft), w.p. `fraction`."""
    check_on_policy_fraction(fraction)
    if fraction in (0.0, 1.0):
        return [fraction == 1.0] * count
    return (torch.rand(count, generator=generator) < fraction).tolist()


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for (run seed, step, micro-batch, rank): the same on resume."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def batch_indices(index: int, rank: int, world: int, batch_size: int, count: int, seed: int) -> list[int]:
    """Examples of global micro-batch `index` for process `rank`; a fresh shuffle each epoch."""
    start = (index * world + rank) * batch_size
    orders: dict[int, torch.Tensor] = {}  # each epoch's permutation, drawn once per call
    out = []
    for flat in range(start, start + batch_size):
        epoch, position = divmod(flat, count)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(step_seed(seed, 1_000_003, epoch))
            orders[epoch] = torch.randperm(count, generator=generator)
        out.append(int(orders[epoch][position]))
    return out


@torch.no_grad()
def sample_completions(model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int,
                       temperature: float, eos_ids: set[int], pad_id: int,
                       weight_left: bool | None = None) -> list[list[int]]:
    """Completions of each prompt by `model` (HF generate, left padding); cut after EOS.

    weight_left: each decode step's few rows multiply weight-left (`few_row_products_weight_left`);
    None: on CPU, where that order is the fast one for fp32 (benchmarks/distill_step.py)."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt):] = torch.tensor(prompt)
        attention_mask[i, length - len(prompt):] = 1
    config = GenerationConfig(
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=None,
        top_p=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
    )
    was_training = model.training
    model.eval()
    device = model.device
    weight_left = device.type == "cpu" if weight_left is None else weight_left
    products = few_row_products_weight_left(model) if weight_left else nullcontext()
    with products:
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=config)
    model.train(was_training)
    new = output[:, length:].tolist()
    return [truncate_completion(row, eos_ids, pad_id if pad_id not in eos_ids else None) for row in new]


def make_batch(items: list[TokenizedExample], on_policy_fraction: float, off_policy: str,
               target, draft: PreTrainedModel, max_new_tokens: int, temperature: float,
               eos_ids: set[int], pad_id: int, generator: torch.Generator) -> tuple[Batch, int]:
    """Build a batch with each completion drawn on-policy (draft) w.p. lambda, else off-policy.
    target: a torch model or a teacher (`teachers`; a llama.cpp target draws from `generator`).

    Returns the batch and how many completions were on-policy.
    """
    on_policy = choose_on_policy(len(items), on_policy_fraction, generator)
    completions: list[list[int] | None] = [None] * len(items)
    by_source: dict[str, list[int]] = {"draft": [], "target": [], "fixed": []}
    for i, (item, on) in enumerate(zip(items, on_policy)):
        source = "draft" if on else off_policy
        if source == "fixed" and item.reference_ids is None:
            source = "target"  # no reference text: fall back to the target's own completion
        by_source[source].append(i)
    for i in by_source["fixed"]:
        completions[i] = items[i].reference_ids
    for source, model in (("draft", draft), ("target", target)):
        chosen = by_source[source]
        if chosen:
            generated = _sample(model, [items[i].prompt_ids for i in chosen], max_new_tokens, temperature, eos_ids,
                                pad_id, generator)
            for i, completion in zip(chosen, generated):
                completions[i] = completion
    batch = build_batch([it.prompt_ids for it in items], completions, pad_id)
    return batch, sum(on_policy)


def _sample(model, prompts, max_new_tokens, temperature, eos_ids, pad_id, generator) -> list[list[int]]:
    """Completions by a torch model (HF generate, global generator) or a teacher (which may
    draw from `generator`)."""
    if hasattr(model, "completion_logits"):
        return model.sample(prompts, max_new_tokens, temperature, eos_ids, pad_id, generator=generator)
    return sample_completions(model, prompts, max_new_tokens, temperature, eos_ids, pad_id)


def off_policy_completions(items: list[TokenizedExample], source: str, target, max_new_tokens: int,
                           temperature: float, eos_ids: set[int], pad_id: int,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """Each item's reference ('fixed'; the target's sample where it has none) or the target's
    sample. target: a torch model or a teacher (`teachers`)."""
    completions: list[list[int] | None] = [it.reference_ids if source == "fixed" else None for it in items]
    sampled = [i for i, c in enumerate(completions) if c is None]
    if sampled:
        generated = _sample(target, [items[i].prompt_ids for i in sampled], max_new_tokens, temperature, eos_ids,
                            pad_id, generator)
        for i, completion in zip(sampled, generated):
            completions[i] = completion
    return completions


@torch.no_grad()
def score_top_k(target: PreTrainedModel, batch: Batch, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The target's top-k (ids [C, k], log-probs [C, k]) at each row's C completion positions."""
    positions = loss_positions(batch)
    rows = batch.input_ids.shape[0]
    if positions.numel() == 0:
        return [(torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k))) for _ in range(rows)]
    ids, log_probs = sparse_teacher(logits_at(target, batch.to(target.device), positions.to(target.device)), k)
    mask = batch.loss_mask[:, positions].bool()
    return [(ids[row][mask[row]].cpu(), log_probs[row][mask[row]].float().cpu()) for row in range(rows)]


def fill_teacher_cache(cache: TeacherCache, fill_name: str, items: list[TokenizedExample], indices: list[int],
                       source: str, target, k: int, max_new_tokens: int, temperature: float,
                       eos_ids: set[int], pad_id: int, generator: torch.Generator | None = None) -> int:
    """Generate and score the examples of `indices` the cache lacks, as one fill; returns how
    many. target: a torch model or a teacher (`teachers`)."""
    missing = cache.missing(indices)
    if not missing:
        return 0
    chosen = [items[i] for i in missing]
    completions = off_policy_completions(chosen, source, target, max_new_tokens, temperature, eos_ids, pad_id,
                                         generator)
    batch = build_batch([it.prompt_ids for it in chosen], completions, pad_id)
    scored = target.top_k(batch, k) if hasattr(target, "completion_logits") else score_top_k(target, batch, k)
    cache.forwards += 1
    cache.add_fill(fill_name, {index: CachedTeacher(torch.tensor(completion, dtype=torch.long), ids, log_probs)
                               for index, completion, (ids, log_probs) in zip(missing, completions, scored)})
    return len(missing)


def cached_batch(cache: TeacherCache, items: list[TokenizedExample], indices: list[int], pad_id: int,
                 k: int) -> tuple[Batch, tuple[torch.Tensor, torch.Tensor]]:
    """The batch of `indices` from cached completions, and its teacher laid out like it ([B, T, k] x2)."""
    teachers = [cache.get(i) for i in indices]
    prompts = [items[i].prompt_ids for i in indices]
    batch = build_batch(prompts, [t.completion.tolist() for t in teachers], pad_id)
    return batch, teacher_rows(teachers, [len(p) for p in prompts], batch.input_ids.shape[1], k)


def sparse_rows(batch: Batch, scored: list[tuple[torch.Tensor, torch.Tensor]],
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row teachers (ids, log_probs: [C_i, k], in loss-mask order) laid out like the
    batch: ids [B, T, k] long and log_probs [B, T, k] float32, zero off the loss mask."""
    rows, length = batch.input_ids.shape
    ids = torch.zeros((rows, length, k), dtype=torch.long)
    log_probs = torch.zeros((rows, length, k), dtype=torch.float32)
    for row, (row_ids, row_log_probs) in enumerate(scored):
        positions = batch.loss_mask[row].nonzero().squeeze(-1).cpu()
        ids[row, positions] = row_ids
        log_probs[row, positions] = row_log_probs.float()
    return ids, log_probs


def loss_positions(batch: Batch) -> torch.Tensor:
    """Sequence positions where any row has a loss token: [K] long."""
    return batch.loss_mask.any(dim=0).nonzero().squeeze(-1)


def logits_at(model, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` only (saves the LM head elsewhere): [B, K, V]."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 logits_to_keep=positions, use_cache=False).logits


def distill_loss(divergence: str, beta: float, target, draft, batch: Batch,
                 teacher: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The per-sequence-averaged divergence on completion tokens (or CE for 'ce').

    teacher: a cached top-k teacher (ids, log_probs: [B, T, k], `cached_batch`); without
    it the target scores the batch here, densely, in its own dtype (outside any autocast).
    """
    positions = loss_positions(batch)
    if positions.numel() == 0:
        return sum(p.sum() * 0.0 for p in draft.parameters() if p.requires_grad)
    mask = batch.loss_mask[:, positions]
    draft_logits = logits_at(draft, batch, positions)
    if divergence == "ce":
        labels = batch.input_ids[:, positions + 1]
        return sequence_loss(cross_entropy_per_token(draft_logits, labels), mask)
    if teacher is not None:
        ids, log_probs = (t[:, positions].to(draft_logits.device) for t in teacher)
        return sequence_loss(sparse_divergence_per_token(divergence, ids, log_probs, draft_logits, beta), mask)
    with torch.no_grad(), torch.autocast(draft_logits.device.type, enabled=False):
        target_logits = logits_at(target, batch, positions)
    return sequence_loss(divergence_fn(divergence, beta)(target_logits, draft_logits), mask)
