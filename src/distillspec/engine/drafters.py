"""Drafters: anything that proposes the next few tokens for the target to verify.

A drafter is long-lived (it holds a model, or settings); what changes during one
generation lives in a *session* that the loop opens per call with `drafter.session()`,
so no call inherits another's KV cache or prefill. A session has one method,
`propose(context, gamma, sampling, generator)`, returning up to `gamma` tokens and the
distributions they were drawn from (None for deterministic drafts, which the verifier
treats as one-hot). A session may return fewer tokens than asked, even none.

Every drafter declares `vocab_size`: the rows of the distributions it proposes with, or
None when it proposes no distributions (prompt lookup). The loop checks it against the
target in one place (`loop.shared_vocab_size`) and tells the session the vocabulary to
use. Loading drafters from specs and files is `models.drafts`, not here.

An object with only a `propose` method is accepted as a stateless drafter that is its
own session.

`LookupFirstDrafter` pairs the two kinds: prompt lookup where the context holds a match, the
draft model elsewhere. Its session also has `look_up(context, gamma)`; the loop asks it first
and sizes each kind's blocks with that kind's own gamma policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from ..errors import DistillSpecError
from .backend import is_llamacpp, model_device, open_cache, output_rows
from .kv import PrefixCache, head_rows
from .sampling import SamplingConfig, next_token


@dataclass
class DraftProposal:
    """tokens: [G] long drafted ids; probs: [G, V] draft distributions, or None (one-hot).

    forward_passes, tokens_fed: model forward passes this proposal cost and the tokens they
    fed (catch-up and prompt prefill included), counted by the session's cache.
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None
    forward_passes: int = 0
    tokens_fed: int = 0


@runtime_checkable
class DraftSession(Protocol):
    def propose(
        self,
        context: list[int],
        gamma: int,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
    ) -> DraftProposal: ...


@runtime_checkable
class Drafter(Protocol):
    vocab_size: int | None

    def session(self, vocab_size: int | None = None) -> DraftSession: ...


def empty_proposal(device: torch.device | str = "cpu") -> DraftProposal:
    return DraftProposal(torch.empty(0, dtype=torch.long, device=device), None)


class ModelDraftSession:
    """One generation's drafting with a causal LM; owns that call's draft KV cache."""

    def __init__(self, lm: PrefixCache):
        self.lm = lm

    def behind(self, context: list[int]) -> int:
        """Positions of `context` the next proposal would read before drafting."""
        return self.lm.missing(list(context))

    def read_ahead(self, context: list[int], limit: int) -> DraftProposal:
        """Read at most `limit` of the positions of `context` this session lacks, and draft
        nothing: a server catches a draft up on a long prompt a chunk per step instead of in
        one read that would hold up every other stream's step."""
        if limit < 1:
            raise ValueError(f"a draft read needs a limit of at least 1 position, got {limit}")
        context = list(context)
        passes_before, fed_before = self.lm.forward_passes, self.lm.tokens_processed
        end = len(context) - self.behind(context) + limit
        self.lm.next_logits(context[:min(end, len(context))], 1)
        return DraftProposal(torch.empty(0, dtype=torch.long, device=self.lm.device), None,
                             self.lm.forward_passes - passes_before, self.lm.tokens_processed - fed_before)

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        if gamma <= 0:
            return empty_proposal(self.lm.device)
        passes_before, fed_before = self.lm.forward_passes, self.lm.tokens_processed
        logits = self.lm.next_logits(list(context), 1)  # rolls back or catches up
        tokens, probs = [], []
        for i in range(gamma):
            token, token_probs = next_token(logits, sampling, generator)  # [1], [1, V] | None
            tokens.append(token)
            probs.append(token_probs)
            if i + 1 < gamma:
                logits = self.lm.append(token)
        stacked = None if probs[0] is None else torch.cat(probs)
        return DraftProposal(torch.cat(tokens), stacked, self.lm.forward_passes - passes_before,
                             self.lm.tokens_processed - fed_before)


class ModelDrafter:
    """Drafts autoregressively with a (small) causal LM: a torch/HF model or a GGUF run by
    llama.cpp (`engine.backend`).

    head_token_ids: score only these ids (a truncated head; the rest get probability 0).
    """

    def __init__(self, model, head_token_ids: torch.Tensor | None = None):
        self.model = model
        self.head_token_ids = head_token_ids
        self.vocab_size = output_rows(model)
        self._partial_head = None

    def partial_head(self):
        """The truncated head's rows, sliced once for every session (None: full head, or a
        llama.cpp model, whose cache masks the other ids after the full head instead)."""
        if self.head_token_ids is not None and self._partial_head is None and not is_llamacpp(self.model):
            ids = torch.as_tensor(self.head_token_ids, dtype=torch.long, device=model_device(self.model))
            self._partial_head = head_rows(self.model.get_output_embeddings(), ids)
        return self._partial_head

    def session(self, vocab_size: int | None = None) -> ModelDraftSession:
        """A fresh session (empty KV cache); `vocab_size` slices logits to the shared vocabulary."""
        if vocab_size is not None and vocab_size > self.vocab_size:
            raise DistillSpecError(f"the draft has {self.vocab_size} output rows; cannot score {vocab_size}")
        sliced = None if vocab_size == self.vocab_size else vocab_size
        return ModelDraftSession(PrefixCache(open_cache(self.model, sliced, self.head_token_ids,
                                                        self.partial_head())))


class PromptLookupDrafter:
    """Proposes the continuation of the latest earlier occurrence of the context's tail.

    Looks for the last `n` tokens (n from max_ngram down to min_ngram) earlier in the
    context and proposes the tokens that followed them. Free to run, deterministic, and
    strong on inputs that the output quotes (code edits, summaries, repetitive text).
    `lookup` scans the context (the reference); a call's session (`PromptLookupSession`)
    keeps an index of the n-grams it has seen instead, so a step costs the same at 4,000
    tokens of context as at 40. The defaults (6 down to 3) are the measured best with long
    blocks on a CPU (docs/prompt-lookup.md): a match of one or two tokens is mostly chance,
    and each wrong proposal costs a wider target pass.
    """

    vocab_size = None

    def __init__(self, max_ngram: int = 6, min_ngram: int = 3):
        if not 1 <= min_ngram <= max_ngram:
            raise DistillSpecError(
                f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}"
            )
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def session(self, vocab_size: int | None = None) -> "PromptLookupSession":
        return PromptLookupSession(self.max_ngram, self.min_ngram)

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        return DraftProposal(torch.tensor(self.lookup(list(context), gamma), dtype=torch.long), None)

    def lookup(self, context: list[int], gamma: int) -> list[int]:
        """The continuation of the latest earlier occurrence of the longest matching tail
        (up to `gamma` tokens; [] when none), found by scanning the context."""
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


class PromptLookupSession:
    """One call's prompt lookup, with `PromptLookupDrafter.lookup`'s answers from an index.

    Why: the scan costs a pass over the context for every n-gram size at every step, which
    grows with the context (docs/prompt-lookup.md has the times), and lookup runs at every
    step by default. The index maps each n-gram to the latest position it starts at,
    among those with a token after them; a call's context only grows, so each step indexes
    only its new tokens. A context that is not the indexed one extended (a caller's own
    use) is indexed again from the start.
    """

    def __init__(self, max_ngram: int, min_ngram: int):
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        self.starts: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.indexed: list[int] = []  # the context the index covers

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        return DraftProposal(torch.tensor(self.lookup(list(context), gamma), dtype=torch.long), None)

    def lookup(self, context: list[int], gamma: int) -> list[int]:
        if gamma <= 0:
            return []
        self._index(context)
        for n in self.sizes:
            if n < len(context):
                start = self.starts[n].get(tuple(context[-n:]))
                if start is not None:
                    return context[start + n:start + n + gamma]
        return []

    def _index(self, context: list[int]) -> None:
        """Add the n-grams of `context` that have a token after them and are not indexed yet."""
        seen = len(self.indexed)
        if len(context) < seen or context[max(0, seen - 8):seen] != self.indexed[max(0, seen - 8):]:
            self.starts, seen = {n: {} for n in self.sizes}, 0  # not the indexed context extended
        for n, starts in self.starts.items():
            # starts 0 .. len - n - 1: the n-gram ends before the context's last token
            for start in range(max(0, seen - n), len(context) - n):
                starts[tuple(context[start:start + n])] = start
        self.indexed = list(context)


class LookupFirstDrafter:
    """Prompt lookup where the context has a match, `model_drafter` where it has none.

    Why: on text a reply copies (an edited function, a quoted passage), lookup proposes long
    right blocks for free; elsewhere it proposes nothing and a draft model is the only way
    to draft. One drafter for both kinds of request, as a server or an editor integration
    sees them. The model's session catches up by content on the text the lookup blocks
    committed, so its KV cache stays valid.
    """

    def __init__(self, model_drafter: ModelDrafter, lookup: PromptLookupDrafter | None = None):
        self.model_drafter = model_drafter
        self.lookup = lookup if lookup is not None else PromptLookupDrafter()
        self.vocab_size = model_drafter.vocab_size

    def session(self, vocab_size: int | None = None) -> "LookupFirstSession":
        return LookupFirstSession(self.lookup.session(), self.model_drafter.session(vocab_size))


class LookupFirstSession:
    """One call's drafting for `LookupFirstDrafter`: `look_up` is the lookup's block,
    `propose` the draft model's."""

    def __init__(self, lookup: PromptLookupSession, model_session: DraftSession):
        self.lookup, self.model_session = lookup, model_session

    def look_up(self, context: list[int], gamma: int) -> DraftProposal:
        return self.lookup.propose(context, gamma, None, None)

    def behind(self, context: list[int]) -> int:
        return self.model_session.behind(context)

    def read_ahead(self, context: list[int], limit: int) -> DraftProposal:
        return self.model_session.read_ahead(context, limit)

    def propose(self, context, gamma, sampling, generator) -> DraftProposal:
        return self.model_session.propose(context, gamma, sampling, generator)


def as_drafter(draft) -> Drafter:
    """A `PreTrainedModel` becomes a `ModelDrafter`; a drafter object is used as is."""
    if isinstance(draft, PreTrainedModel) or is_llamacpp(draft):
        return ModelDrafter(draft)
    if hasattr(draft, "session") or hasattr(draft, "propose"):
        return draft
    raise DistillSpecError(
        f"draft must be a transformers PreTrainedModel or a drafter with session()/propose(), "
        f"got {type(draft).__name__}"
    )


def model_drafter_of(drafter) -> ModelDrafter | None:
    """The ModelDrafter that drafts with a model: `drafter` itself, a LookupFirstDrafter's,
    or None (prompt lookup, or a user's drafter object)."""
    if isinstance(drafter, LookupFirstDrafter):
        return drafter.model_drafter
    return drafter if isinstance(drafter, ModelDrafter) else None


def draft_model_of(drafter):
    """The model a drafter runs (a torch model or a LlamaCppModel), None for prompt lookup."""
    return getattr(model_drafter_of(drafter) or drafter, "model", None)


def open_session(drafter, vocab_size: int | None) -> DraftSession:
    """The drafter's per-call session; a propose-only object is its own (stateless) session."""
    if hasattr(drafter, "session"):
        return drafter.session(vocab_size)
    return drafter
