"""The model backends the loops talk to, behind one set of calls.

Why: the loops need the same few things of any target or draft: a per-call cache that
appends tokens, returns the logits of the last few positions and rolls back; how many
rows its output has; how long a context it takes; which tokens end a reply. A torch/HF
model answers through `kv.CachedLM` and its config; a GGUF run by llama.cpp through
`llamacpp.LlamaCppModel`. The loops call the functions here and never ask which it is.
"""

from __future__ import annotations

import torch

from .kv import CachedLM, model_vocab_size
from .llamacpp import LlamaCppLM, LlamaCppModel, LlamaCppSequence


def is_llamacpp(model) -> bool:
    return isinstance(model, (LlamaCppModel, LlamaCppSequence))


def open_cache(model, vocab_size: int | None = None, head_token_ids: torch.Tensor | None = None,
               partial_head=None):
    """A fresh per-call cache of `model` (CachedLM's interface): see `kv.CachedLM` for the
    arguments (partial_head: a torch model's truncated head rows, built once by its drafter)."""
    if is_llamacpp(model):
        return LlamaCppLM(model, vocab_size, head_token_ids)
    return CachedLM(model, vocab_size, head_token_ids, partial_head)


def output_rows(model) -> int:
    """Rows of the model's logits (may exceed the tokenizer's size when padded)."""
    return model.vocab_size if is_llamacpp(model) else model_vocab_size(model)


def context_positions(model) -> int | None:
    """Positions the model can attend to (None: not known)."""
    if is_llamacpp(model):
        return model.context_length
    return getattr(model.config, "max_position_embeddings", None)


def own_eos(model):
    """The token or tokens that end a reply when the caller names none, as the model states
    them (an int, several, or None); `inputs.eos_ids_for` makes them a set."""
    if is_llamacpp(model):
        return model.eos_token_ids
    return getattr(getattr(model, "generation_config", None), "eos_token_id", None)


def model_device(model) -> torch.device:
    return LlamaCppLM.device if is_llamacpp(model) else model.device
