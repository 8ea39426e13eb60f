"""A causal LM together with its KV cache and the token ids that cache holds.

Rollback is by content, not by bookkeeping: a caller asks for logits after a token
sequence, the cache keeps its longest common prefix with that sequence, drops the rest,
and only the missing tokens are fed. Rejected draft tokens thus vanish from both caches
on the next call, and a draft that ran one token short (all gamma accepted) catches up
by being fed two tokens. This is gpt-fast's "rollback is not advancing", made explicit.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Called once per forward pass on the whole context, so it compares list slices (a C
    loop) and bisects on a mismatch instead of stepping through tokens in Python.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def truncate_cache(cache: DynamicCache, keep: int) -> None:
    """Keep the first `keep` positions of `cache` (transformers 5 `crop` takes -removed)."""
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)


class CachedLM:
    """Incremental forward passes of one model over a growing, sometimes rewound, sequence.

    head_token_ids: compute logits only for these token ids (a truncated LM head); every
    other token gets -inf, i.e. probability zero. For a small draft the full-vocabulary
    head is most of its cost, and a draft that gives zero probability to some tokens keeps
    rejection sampling exact (those tokens come from the target's residual instead).
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None,
                 head_token_ids: torch.Tensor | None = None):
        self.model = model
        self.vocab_size = vocab_size  # slice logits to this many entries (padded heads)
        self.cache = DynamicCache(config=model.config)
        self.cached_ids: list[int] = []
        self.forward_passes = 0
        self.head_token_ids = None
        if head_token_ids is not None:
            head = model.get_output_embeddings()
            self.head_token_ids = torch.as_tensor(head_token_ids, dtype=torch.long, device=self.device)
            self.head_weight = head.weight.detach()[self.head_token_ids].clone()  # [K, H]
            self.head_bias = None if head.bias is None else head.bias.detach()[self.head_token_ids].clone()
            self.full_vocab = vocab_size or head.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.cached_ids = []

    @torch.inference_mode()
    def next_logits(self, ids: list[int], num_last: int = 1) -> torch.Tensor:
        """Logits predicting the token after each of the last `num_last` positions of `ids`.

        ids: the whole sequence (prompt and everything committed or drafted so far).
        Returns [num_last, V] float32. Afterwards the cache holds exactly `ids`.
        """
        if not 1 <= num_last <= len(ids):
            raise ValueError(f"num_last must be in 1..{len(ids)}, got {num_last}")
        keep = min(common_prefix_length(self.cached_ids, ids), len(ids) - num_last)
        truncate_cache(self.cache, keep)
        new_ids = torch.tensor([ids[keep:]], dtype=torch.long, device=self.device)
        if self.head_token_ids is None:
            out = self.model(input_ids=new_ids, past_key_values=self.cache, use_cache=True,
                             logits_to_keep=num_last)
            logits = out.logits[0, -num_last:].float()
        else:
            out = self.model.get_decoder()(input_ids=new_ids, past_key_values=self.cache, use_cache=True)
            logits = self._truncated_head(out.last_hidden_state[0, -num_last:])
        self.cache = out.past_key_values
        self.cached_ids = list(ids)
        self.forward_passes += 1
        return logits if self.vocab_size is None else logits[:, : self.vocab_size]

    def _truncated_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, H] -> [n, V] logits, -inf outside head_token_ids."""
        partial = torch.nn.functional.linear(hidden, self.head_weight, self.head_bias).float()  # [n, K]
        logits = torch.full((hidden.shape[0], self.full_vocab), float("-inf"), device=hidden.device)
        logits[:, self.head_token_ids] = partial
        return logits
