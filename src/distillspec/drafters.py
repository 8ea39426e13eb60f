"""Drafters: anything that proposes the next few tokens for the target to verify.

One method, `propose(context, gamma, sampling, generator)`, returns up to `gamma` tokens
and the distributions they were drawn from (None for deterministic drafters, which the
verifier treats as one-hot). A drafter may return fewer tokens than asked (even none);
the speculative loop then verifies what it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from .cached_lm import CachedLM
from .errors import DistillSpecError
from .sampling import SamplingConfig, sample_tokens, warp_logits


@dataclass
class DraftProposal:
    """tokens: drafted ids; probs: [len(tokens), V] draft distributions, or None (one-hot)."""

    tokens: list[int]
    probs: torch.Tensor | None
    forward_passes: int = 0  # model forward passes spent drafting


@runtime_checkable
class Drafter(Protocol):
    def propose(
        self,
        context: list[int],
        gamma: int,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DraftProposal: ...


class ModelDrafter:
    """Drafts autoregressively with a (small) causal LM, keeping its KV cache across steps."""

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None):
        self.lm = CachedLM(model, vocab_size=vocab_size)

    @property
    def model(self) -> PreTrainedModel:
        return self.lm.model

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        ids = list(context)
        probs = []
        for _ in range(gamma):
            token_probs = warp_logits(self.lm.next_logits(ids, 1), sampling)  # [1, V]
            ids.append(int(sample_tokens(token_probs, generator)[0]))
            probs.append(token_probs[0])
        tokens = ids[len(context):]
        stacked = torch.stack(probs) if probs else None
        return DraftProposal(tokens=tokens, probs=stacked, forward_passes=gamma)


class PromptLookupDrafter:
    """Proposes the continuation of the latest earlier occurrence of the context's tail.

    Looks for the last `n` tokens (n from max_ngram down to min_ngram) earlier in the
    context and proposes the tokens that followed them. Free to run, deterministic, and
    strong on inputs that the output quotes (code edits, summaries, repetitive text).
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise DistillSpecError(
                f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}"
            )
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        return DraftProposal(tokens=self.lookup(list(context), gamma), probs=None)

    def lookup(self, context: list[int], gamma: int) -> list[int]:
        if gamma <= 0:
            return []
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            # latest start strictly before the tail itself
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    follow = context[start + n:start + n + gamma]
                    if follow:
                        return follow
        return []
