"""The model-facing pieces of one distillation step: prompts in, loss out.

Kept apart from the training loop so evaluation and tests use the very same code.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import PreTrainedModel

from ..data.sources import check_on_policy_fraction
from ..data.tokenize import TokenizedExample
from .batch import Batch, build_batch, loss_positions
from .divergences import cross_entropy_per_token, divergence_fn, sequence_loss, sparse_divergence_per_token
from .teacher_cache import CachedTeacher, TeacherCache, teacher_rows
from .teachers import as_teacher, keeps_top_k_when_sampling
from .torch_passes import logits_at


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


def make_batch(items: list[TokenizedExample], on_policy_fraction: float, off_policy: str,
               target, draft: PreTrainedModel, max_new_tokens: int, temperature: float,
               eos_ids: set[int], pad_id: int, generator: torch.Generator) -> tuple[Batch, int]:
    """Build a batch with each completion drawn on-policy (draft) w.p. lambda, else off-policy.
    target: a torch model or a teacher (`teachers`; a llama.cpp target draws from `generator`).

    Returns the batch and how many completions were on-policy.
    """
    completions, _, on_policy = draw_completions(items, on_policy_fraction, off_policy, target, draft,
                                                 max_new_tokens, temperature, eos_ids, pad_id, generator)
    return build_batch([it.prompt_ids for it in items], completions, pad_id), on_policy


def make_scored_batch(items: list[TokenizedExample], on_policy_fraction: float, off_policy: str,
                      target, draft: PreTrainedModel, max_new_tokens: int, temperature: float,
                      eos_ids: set[int], pad_id: int, generator: torch.Generator,
                      k: int) -> tuple[Batch, int, tuple[torch.Tensor, torch.Tensor]]:
    """`make_batch` (the same completions from the same generator) with the target's top-k
    laid out like the batch (ids, log_probs: [B, T, k], `sparse_rows`). The target's own
    samples keep the top-k they were drawn with where the teacher keeps it (llama.cpp); the
    other rows (the draft's samples, fixed text) are scored together in one call."""
    completions, kept, on_policy = draw_completions(items, on_policy_fraction, off_policy, target, draft,
                                                    max_new_tokens, temperature, eos_ids, pad_id, generator, k)
    batch = build_batch([it.prompt_ids for it in items], completions, pad_id)
    scored = top_k_in_order(as_teacher(target), items, completions, kept, k, pad_id)
    return batch, on_policy, sparse_rows(batch, scored, k)


def draw_completions(items: list[TokenizedExample], on_policy_fraction: float, off_policy: str, target,
                     draft: PreTrainedModel, max_new_tokens: int, temperature: float, eos_ids: set[int],
                     pad_id: int, generator: torch.Generator, k: int = 0
                     ) -> tuple[list[list[int]], dict[int, tuple[torch.Tensor, torch.Tensor]], int]:
    """Each item's completion (the draft's sample w.p. lambda, else off-policy), the top-k kept
    while sampling by item (only with k, only the target's samples, only a teacher that keeps
    it), and how many were on-policy."""
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
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for source, model in (("draft", draft), ("target", target)):
        chosen = by_source[source]
        if chosen:
            sample_into(as_teacher(model), items, chosen, completions, kept, k if source == "target" else 0,
                        max_new_tokens, temperature, eos_ids, pad_id, generator)
    return completions, kept, sum(on_policy)


def sample_into(teacher, items: list[TokenizedExample], chosen: list[int], completions: list, kept: dict, k: int,
                max_new_tokens: int, temperature: float, eos_ids: set[int], pad_id: int,
                generator: torch.Generator | None) -> None:
    """The teacher's samples for items `chosen`, written into `completions` by item; with k,
    and a teacher that keeps its top-k while sampling (llama.cpp), that top-k into `kept`."""
    prompts = [items[i].prompt_ids for i in chosen]
    if k and keeps_top_k_when_sampling(teacher):
        generated, scored = teacher.sample_top_k(prompts, max_new_tokens, temperature, eos_ids, k, generator=generator)
        kept.update(zip(chosen, scored))
    else:
        generated = teacher.sample(prompts, max_new_tokens, temperature, eos_ids, pad_id, generator=generator)
    for i, completion in zip(chosen, generated):
        completions[i] = completion


def top_k_in_order(teacher, items: list[TokenizedExample], completions: list[list[int]], kept: dict, k: int,
                   pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each item's top-k (ids, log_probs: [C_i, k]): kept from sampling where `kept` has it,
    the rows without one scored together in one call."""
    rest = [i for i in range(len(items)) if i not in kept]
    if rest:
        batch = build_batch([items[i].prompt_ids for i in rest], [completions[i] for i in rest], pad_id)
        kept = {**kept, **dict(zip(rest, teacher.top_k(batch, k)))}
    return [kept[i] for i in range(len(items))]


def scored_off_policy(items: list[TokenizedExample], source: str, teacher, k: int, max_new_tokens: int,
                      temperature: float, eos_ids: set[int], pad_id: int, generator: torch.Generator | None = None
                      ) -> tuple[list[list[int]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each item's reference ('fixed'; the target's sample where it has none) or the target's
    sample, and the teacher's top-k on each (ids, log_probs: [C_i, k]). A teacher that keeps
    its top-k while it samples (llama.cpp) is not asked to score its own samples again."""
    completions: list = [it.reference_ids if source == "fixed" else None for it in items]
    sampled = [i for i, c in enumerate(completions) if c is None]
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if sampled:
        sample_into(teacher, items, sampled, completions, kept, k, max_new_tokens, temperature, eos_ids, pad_id,
                    generator)
    return completions, top_k_in_order(teacher, items, completions, kept, k, pad_id)


def fill_teacher_cache(cache: TeacherCache, fill_name: str, items: list[TokenizedExample], indices: list[int],
                       source: str, target, k: int, max_new_tokens: int, temperature: float,
                       eos_ids: set[int], pad_id: int, generator: torch.Generator | None = None) -> int:
    """Generate and score the examples of `indices` the cache lacks, as one fill; returns how
    many. target: a torch model or a teacher (`teachers`)."""
    missing = cache.missing(indices)
    if not missing:
        return 0
    chosen = [items[i] for i in missing]
    completions, scored = scored_off_policy(chosen, source, as_teacher(target), k, max_new_tokens, temperature,
                                            eos_ids, pad_id, generator)
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
