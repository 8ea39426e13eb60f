"""What distillation asks of its target, behind one interface: sample text, score text.

Why: the target used to be a torch model everywhere in the trainer and the evaluation, so
its two jobs - completions (target-generated data, held-out evaluation text) and logits at
completion positions (the loss, acceptance) - could only run in torch. A teacher does
those two jobs; `TorchTeacher` with a torch model, `llama_teacher.LlamaCppTeacher` with the
same target as llama.cpp runs its GGUF. Code that takes a target accepts either a teacher
or a torch model (`as_teacher`), so callers with a torch model change nothing; the batch
builders (`batches`) reach a model only through it.

- sample(prompts, max_new_tokens, temperature, eos_ids, pad_id, generator) -> completions
- completion_logits(batch) -> [N, V] float32 at the batch's completion tokens (or None)
- top_k(batch, k) -> per row (ids [C, k], log_probs [C, k])
- optionally sample_top_k(prompts, max_new_tokens, temperature, eos_ids, k, generator) ->
  (completions, per completion (ids [C, k], log_probs [C, k])), `keeps_top_k_when_sampling`
"""

from __future__ import annotations

import torch

from .batch import Batch, loss_positions
from .torch_passes import logits_at, sample_completions, score_top_k


class TorchTeacher:
    """A torch causal LM as a teacher (the target, or a draft sampling its own text).
    Sampling draws from torch's global generator, as HF generate does; callers seed it.
    weight_left: the product order of sampling's decode steps (`sample_completions`)."""

    def __init__(self, model, weight_left: bool | None = None):
        self.model = model
        self.weight_left = weight_left

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def sample(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos_ids: set[int],
               pad_id: int, generator: torch.Generator | None = None) -> list[list[int]]:
        return sample_completions(self.model, prompts, max_new_tokens, temperature, eos_ids, pad_id,
                                  weight_left=self.weight_left)

    @torch.no_grad()
    def completion_logits(self, batch: Batch) -> torch.Tensor | None:
        batch = batch.to(self.model.device)
        positions = loss_positions(batch)
        if positions.numel() == 0:
            return None
        mask = batch.loss_mask[:, positions].bool()
        return logits_at(self.model, batch, positions).float()[mask]

    def top_k(self, batch: Batch, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return score_top_k(self.model, batch, k)


def is_teacher(value) -> bool:
    return all(hasattr(value, name) for name in ("sample", "completion_logits", "top_k"))


def keeps_top_k_when_sampling(teacher) -> bool:
    """Whether the teacher can return its top-k at each position it samples (`sample_top_k`):
    its samples then need no scoring pass of their own."""
    return hasattr(teacher, "sample_top_k")


def as_teacher(model_or_teacher):
    """A teacher as is; a torch model wrapped in a TorchTeacher."""
    return model_or_teacher if is_teacher(model_or_teacher) else TorchTeacher(model_or_teacher)
