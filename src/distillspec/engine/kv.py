"""KV caches that roll back, for every cache kind a model uses.

A speculative step feeds tokens that may be rejected, so both caches must be able to
forget their last few positions. Full-attention layers simply drop them. Sliding-window
layers normally keep only the last `window - 1` positions, and once a context passes the
window they cannot un-see a token (transformers refuses `crop` there). The strategy here
is the one transformers' own assisted generation uses: the cache *records the past* (a
sliding layer keeps what the last forward added until the next `crop`), and every
rollback calls `crop`, which removes the rejected positions and trims the sliding layers
back to their window. So rollback is exact for full, sliding and mixed models, and memory
stays at the window.

A `CachedLM` belongs to one generation call: it is created empty, so no call inherits
another's prefill.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Compares list slices (a C loop) and bisects on a mismatch instead of stepping through
    tokens in Python.
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


def keepable_prefix(cached: list[int], ids: list[int], num_logits: int) -> int:
    """How many leading positions of `ids` a cache holding `cached` may keep: their common
    prefix, but never the last `num_logits`, whose logits must be computed by feeding them."""
    return min(common_prefix_length(cached, ids), len(ids) - num_logits)


def rollback_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty cache of the model's own layer kinds that can always be cropped."""
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which this model's forward takes its KV cache.

    transformers 5.24 renamed `past_key_values` to `cache`; the old name still works there
    but warns on every pass and goes in 5.40. Both the full model and its decoder are asked,
    since CachedLM calls either.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def model_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output head (may exceed the tokenizer's size when padded)."""
    return int(model.get_output_embeddings().out_features)


class CachedLM:
    """One model's forward passes over a growing, sometimes rewound, sequence.

    `length` is the number of positions the cache holds. `forward` appends tokens and
    returns the logits of the last few; `rollback` forgets positions past a length.

    vocab_size: slice logits to this many entries (a padded head compared over the
    tokenizer's ids). head_token_ids: compute logits only for these ids (a truncated LM
    head); every other id gets -inf, i.e. probability zero, which keeps rejection sampling
    exact (those tokens come from the target's residual instead).
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int | None = None,
                 head_token_ids: torch.Tensor | None = None, partial_head=None):
        self.model = model
        self.vocab_size = vocab_size
        self.cache = rollback_cache(model)
        self.cache_keyword = cache_keyword(model)
        self.length = 0
        self.forward_passes = 0
        self.tokens_processed = 0
        self.head_token_ids = None
        if head_token_ids is not None:
            head = model.get_output_embeddings()
            self.head_token_ids = torch.as_tensor(head_token_ids, dtype=torch.long, device=self.device)
            # built once per drafter when it passes one (slicing a 151,936-row head costs)
            self.partial_head = partial_head or head_rows(head, self.head_token_ids)
            self.full_vocab = vocab_size or head.out_features

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def forward(self, new_ids: torch.Tensor, num_logits: int = 1) -> torch.Tensor:
        """Append `new_ids` ([n] long) and return logits after each of the last `num_logits`.

        Returns [num_logits, V] float32; row i predicts the token after position
        length - num_logits + i.
        """
        if not 1 <= num_logits <= new_ids.shape[0]:
            raise ValueError(f"num_logits must be in 1..{new_ids.shape[0]}, got {num_logits}")
        input_ids = new_ids.to(self.device).view(1, -1)
        cache = {self.cache_keyword: self.cache}
        if self.head_token_ids is None:
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=num_logits, **cache)
            logits = out.logits[0, -num_logits:].float()
        else:
            out = self.model.get_decoder()(input_ids=input_ids, use_cache=True, **cache)
            logits = self._truncated_head(out.last_hidden_state[0, -num_logits:])
        self.cache = getattr(out, self.cache_keyword)
        self.length += int(input_ids.shape[1])
        self.forward_passes += 1
        self.tokens_processed += int(input_ids.shape[1])
        return logits if self.vocab_size is None else logits[:, : self.vocab_size]

    def resume(self, prompt: list[int]) -> int:
        """Keep what the cache holds of `prompt` from a call before: nothing, since a torch
        cache is made per call (llama.cpp's sequences may keep a prefix: `LlamaCppLM.resume`)."""
        return 0

    def rollback(self, length: int) -> None:
        """Keep the first `length` positions. Always crops, which also trims sliding layers."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: the cache holds {self.length} positions")
        if self.length:  # an empty cache has nothing to drop (and its layers are not initialized)
            self.cache.crop(length - self.length)  # transformers 5: a negative count of positions to drop
        self.length = length

    def _truncated_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [n, H] -> [n, V] logits, -inf outside head_token_ids."""
        partial = self.partial_head(hidden).float()  # [n, K]
        logits = torch.full((hidden.shape[0], self.full_vocab), float("-inf"), device=hidden.device)
        logits[:, self.head_token_ids] = partial
        return logits


def head_rows(head: torch.nn.Module, rows: torch.Tensor):
    """A callable computing only `rows` of the head's outputs: hidden [n, H] -> [n, K].

    A quantized head (anything with `select_rows`) slices itself; a plain Linear is sliced
    by weight.
    """
    if hasattr(head, "select_rows"):
        return head.select_rows(rows)
    weight = head.weight.detach()[rows].clone()  # [K, H]
    bias = None if head.bias is None else head.bias.detach()[rows].clone()
    return lambda hidden: torch.nn.functional.linear(hidden, weight, bias)


class PrefixCache:
    """Any cache with CachedLM's interface (`forward`, `rollback`, `length`; a CachedLM or
    an `engine.llamacpp.LlamaCppLM`) addressed by content: ask for logits after a token
    list, and the cache keeps its longest common prefix with that list and feeds only the rest.

    For drafters, which see only the committed context each step: rejected draft tokens
    vanish on the next call, and a draft one token behind (all gamma accepted) catches up
    by being fed two tokens. gpt-fast's "rollback is not advancing", made explicit.
    """

    def __init__(self, lm):
        self.lm = lm
        self.cached_ids: list[int] = []
        self._pending: list[torch.Tensor] = []  # fed by `append`, not yet read back to the host

    def __getattr__(self, name: str):
        """What the wrapped cache has (length, device, forward_passes, ...) reads through."""
        if name == "lm":  # not set yet (copy, pickling): no recursion
            raise AttributeError(name)
        return getattr(self.lm, name)

    def forward(self, new_ids: torch.Tensor, num_logits: int = 1) -> torch.Tensor:
        return self.lm.forward(new_ids, num_logits)

    def rollback(self, length: int) -> None:
        self.lm.rollback(length)

    def next_logits(self, ids: list[int], num_last: int = 1) -> torch.Tensor:
        """Logits after each of the last `num_last` positions of `ids`: [num_last, V].

        Afterwards the cache holds exactly `ids`.
        """
        if not 1 <= num_last <= len(ids):
            raise ValueError(f"num_last must be in 1..{len(ids)}, got {num_last}")
        self._read_back()
        keep = keepable_prefix(self.cached_ids, ids, num_last)
        self.rollback(keep)
        logits = self.forward(torch.tensor(ids[keep:], dtype=torch.long), num_last)
        self.cached_ids = list(ids)
        return logits

    def missing(self, ids: list[int]) -> int:
        """How many positions of `ids` the next `next_logits(ids)` would feed (at least one)."""
        self._read_back()
        return len(ids) - keepable_prefix(self.cached_ids, ids, 1)

    def append(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Feed tokens ([n] long, may stay on the device) that extend what is cached.

        Returns the last position's logits [1, V]. The ids are read back to the host only
        at the next `next_logits`, by when the caller has synchronised anyway: drafting
        gamma tokens costs no host round trip per token.
        """
        logits = self.forward(new_ids, 1)
        self._pending.append(new_ids)
        return logits

    def _read_back(self) -> None:
        if self._pending:
            self.cached_ids.extend(torch.cat(self._pending).tolist())
            self._pending = []


def PrefixCachedLM(model: PreTrainedModel, vocab_size: int | None = None,  # noqa: N802 (a class once)
                   head_token_ids: torch.Tensor | None = None, partial_head=None) -> PrefixCache:
    """A PrefixCache over a torch/HF model's CachedLM."""
    return PrefixCache(CachedLM(model, vocab_size, head_token_ids, partial_head))
