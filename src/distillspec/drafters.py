"""Drafters: anything that proposes the next few tokens for the target to verify.

One method, `propose(context, gamma, sampling, generator)`, returns up to `gamma` tokens
and the distributions they were drawn from (None for deterministic drafters, which the
verifier treats as one-hot). A drafter may return fewer tokens than asked (even none);
the speculative loop then verifies what it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None,
                 head_token_ids: torch.Tensor | None = None):
        self.lm = CachedLM(model, vocab_size=vocab_size, head_token_ids=head_token_ids)

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


# ----------------------------------------------------------------------------- from a spec

#: Layers kept by the undistilled fallback draft (negative: counted from the end), used
#: for targets other than the one the shipped default draft was distilled for.
DEFAULT_DRAFT_LAYERS_FROM_ENDS = (0, 1, -2, -1)


def default_draft_folder() -> Path | None:
    """The distilled default draft shipped in the package (a delta folder), if present."""
    folder = Path(__file__).parent / "assets" / "default_draft"
    return folder if (folder / "distillspec_delta.json").is_file() else None


def load_drafter(
    spec: str,
    target: PreTrainedModel,
    target_tokenizer=None,
    *,
    dtype=None,
    device=None,
):
    """Build a drafter from a CLI-style spec.

    'prompt-lookup': n-gram lookup in the context; 'default': the distilled draft shipped
    for the default target (an undistilled layer subset for other targets);
    'layers:0,1,29': a subset of the target's layers sharing its embedding and head;
    a delta folder (see distill/delta.py); anything else: a model spec for `load_model`
    (checked to share the target's tokenizer). A draft folder may name a truncated head.
    """
    from .distill.delta import is_delta_folder, read_delta_info, target_mismatch
    from .distill.drafts import draft_from_spec, layer_subset_draft, read_draft_info

    if spec == "prompt-lookup":
        return PromptLookupDrafter()
    if spec == "default":
        shipped = default_draft_folder()
        if shipped is not None and target_mismatch(read_delta_info(shipped), target) is None:
            return _delta_drafter(shipped, target)
        num_layers = target.config.num_hidden_layers
        layers = sorted({i % num_layers for i in DEFAULT_DRAFT_LAYERS_FROM_ENDS})
        return ModelDrafter(layer_subset_draft(target, layers))
    if spec.startswith("layers:"):
        return ModelDrafter(draft_from_spec(spec, target, target_tokenizer))
    if is_delta_folder(spec):
        return _delta_drafter(spec, target)
    draft = draft_from_spec(spec, target, target_tokenizer, dtype=dtype, device=device)
    return ModelDrafter(draft, head_token_ids=_head_ids(read_draft_info(spec)))


def _head_ids(info: dict):
    ids = info.get("head_token_ids")
    return None if ids is None else torch.tensor(ids)


def _delta_drafter(folder, target) -> ModelDrafter:
    from .distill.delta import load_delta, read_delta_info

    return ModelDrafter(load_delta(folder, target), head_token_ids=_head_ids(read_delta_info(folder)))


def check_same_tokenizer(target_tokenizer, draft_tokenizer) -> None:
    """Refuse a draft whose tokenizer maps tokens to different ids than the target's."""
    if target_tokenizer is None or draft_tokenizer is None:
        return
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_vocab != draft_vocab:
        differing = len(set(target_vocab.items()) ^ set(draft_vocab.items()))
        raise DistillSpecError(
            f"draft and target tokenizers differ ({len(draft_vocab)} vs {len(target_vocab)} "
            f"tokens, {differing} mappings differ); speculative decoding needs a shared tokenizer"
        )
