"""Checking what a caller hands the generation loops, with errors that name the problem."""

from __future__ import annotations

import contextlib
import numbers

import torch
from transformers import PreTrainedModel

from ..choices import MAX_SEED
from ..errors import DistillSpecError
from .backend import context_positions, own_eos


def as_token_list(input_ids, vocab_size: int | None = None) -> list[int]:
    """Accept a 1-D tensor, a [1, T] tensor or a list of ints; return a non-empty list."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise DistillSpecError(
                    f"input_ids has batch size {input_ids.shape[0]}; only batch size 1 is supported"
                )
            input_ids = input_ids[0]
        elif input_ids.dim() != 1:
            raise DistillSpecError(f"input_ids must be 1-D or [1, T], got shape {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise DistillSpecError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
        ids = [int(t) for t in input_ids.tolist()]
    else:
        try:
            values = list(input_ids)
        except TypeError:
            raise DistillSpecError(f"input_ids must be a list of token ids, got {type(input_ids).__name__}") from None
        bad = [t for t in values if not isinstance(t, numbers.Integral) or isinstance(t, bool)]
        if bad:  # a float id would be truncated silently (3.7 -> 3)
            raise DistillSpecError(f"input_ids must be integer token ids, got {bad[0]!r} ({type(bad[0]).__name__})")
        ids = [int(t) for t in values]
    if not ids:
        raise DistillSpecError("the prompt is empty: give at least one token")
    if vocab_size is not None:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise DistillSpecError(f"prompt token ids {bad[:5]} are outside the vocabulary 0..{vocab_size - 1}")
    return ids


def check_lengths(model: PreTrainedModel, prompt_len: int, max_new_tokens: int) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise DistillSpecError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    limit = context_positions(model)
    if limit is None:
        return
    if prompt_len >= limit:
        raise DistillSpecError(f"the prompt has {prompt_len} tokens but the model's context is {limit} tokens")
    if prompt_len + max_new_tokens > limit:
        raise DistillSpecError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {limit} tokens; lower max_new_tokens to {limit - prompt_len} or less"
        )


def shared_vocab_size(target_vocab: int, draft_vocab: int | None, tokenizer_vocab: int | None) -> int:
    """The vocabulary both models are compared over; the one place this is decided.

    draft_vocab None: the drafter proposes no distributions (prompt lookup). Equal sizes
    are fine. Different sizes are tolerated only when both cover the tokenizer (the extra
    rows are padding no tokenizer can produce); logits are then compared over the smaller.
    """
    if draft_vocab is None or target_vocab == draft_vocab:
        return target_vocab
    common = min(target_vocab, draft_vocab)
    if tokenizer_vocab is not None and common >= tokenizer_vocab:
        return common
    known = "" if tokenizer_vocab is None else f" and the tokenizer has {tokenizer_vocab}"
    hint = "" if tokenizer_vocab is not None else " (pass tokenizer_vocab_size if the extra rows are padding)"
    raise DistillSpecError(
        f"draft and target vocabularies do not match: the target has {target_vocab} "
        f"output rows, the draft {draft_vocab}{known}; use a draft built for this target's tokenizer{hint}"
    )


def eos_ids_for(model, eos_token_id) -> set[int]:
    """None: the model's own EOS (a HF generation config's, a GGUF's end tokens); an int or
    ints: those; () disables EOS."""
    if eos_token_id is None:
        eos_token_id = own_eos(model)
        if eos_token_id is None:
            return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


def check_seed(seed) -> None:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise DistillSpecError(f"seed must be an integer in 0..{MAX_SEED} (or None for a random one), got {seed!r}")


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def evaluating(*models):
    """Each torch module among `models` in eval mode inside the block, its own mode restored
    after. Why: a model left in train() mode applies dropout, and two greedy runs differed;
    generation is inference whatever mode the caller left the model in."""
    modules = [m for m in models if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
