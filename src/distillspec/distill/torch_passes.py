"""The passes of a torch causal LM that distillation runs: sample completions, logits at
the completion positions, the top-k there.

Why apart: `teachers.TorchTeacher` wraps them and the batch builders reach them only
through a teacher, so they sit below both (`batches` -> `teachers` -> here).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import GenerationConfig, PreTrainedModel

from ..models.layout import few_row_products_weight_left
from .batch import Batch, loss_positions, truncate_completion
from .divergences import sparse_teacher


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


def logits_at(model, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` only (saves the LM head elsewhere): [B, K, V]."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 logits_to_keep=positions, use_cache=False).logits
