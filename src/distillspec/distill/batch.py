"""One micro-batch of prompt+completion text, and where its loss falls.

Why apart: the batch is what every part of distillation exchanges (teachers score it,
the loss reads it, the cache rebuilds it), so it depends on nothing but torch, and the
teachers, the batch builders and the evaluation all import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def loss_positions(batch: Batch) -> torch.Tensor:
    """Sequence positions where any row has a loss token: [K] long."""
    return batch.loss_mask.any(dim=0).nonzero().squeeze(-1)
