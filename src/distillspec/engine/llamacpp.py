"""llama.cpp as a model backend: GGUF files as published, run by ggml's CPU kernels.

Why: on a CPU, users run a GGUF with llama.cpp, several times faster per token than the
same file dequantized into torch. This module gives the loop the calls it makes of a
`kv.CachedLM` (append tokens and read the logits of the last few, roll back to a length,
the vocabulary) over llama-cpp-python's low-level API, as llama.cpp's own
`common_speculative` drives its contexts:
- one `llama_decode` per pass, with logits flagged only for the positions asked for;
- rollback is `llama_memory_seq_rm` of the positions past the kept length;
- a model holds one context, created once (costly) and reused; each generation call
  clears its memory first, so no call inherits another's prefill. A server's slot may keep
  it instead (`LlamaCppModel.sequence(i, keep_prefix=True)`): a chat client sends the whole
  conversation again each turn, and re-reading it all would cost a prefill of every earlier
  turn. The model records which token ids each sequence holds, so a call keeps the longest
  common prefix with its prompt and feeds only the rest.

Threads: ggml's threads spin at barriers, so two pools busy at once on the same cores
collapse (../shared/MODELS.md). Draft and target run one after the other in the loop, each
with all the cores (`threads`).

llama-cpp-python is imported only here, when a GGUF is opened with this backend.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DistillSpecError
from .kv import keepable_prefix
from .vocab_map import FED_AS_KEY, TARGET_IDS_KEY, TARGET_SIZE_KEY, VocabMap, decode_ids

#: tokens per llama_decode call at most (a longer prompt is fed in pieces of this size)
BATCH_TOKENS = 512


_quiet_logs = None  # the no-op log callback llama.cpp holds; kept alive here


def _llama():
    """llama_cpp, its log silenced (it prints thousands of lines per model load to stderr)."""
    global _quiet_logs
    try:
        import llama_cpp
    except ImportError:
        raise DistillSpecError("the llama.cpp backend needs llama-cpp-python (make install builds it)") from None
    if _quiet_logs is None:
        _quiet_logs = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_quiet_logs, ctypes.c_void_p(0))
    return llama_cpp


class LlamaCppModel:
    """A GGUF file loaded in llama.cpp, with the one context its calls share.

    path: the .gguf file. context: positions the context holds (prompt + new tokens, of all
    sequences together). threads: ggml threads for every pass (default: all cores).
    sequences: how many sequences the context keeps apart (ids 0..sequences-1), so that one
    `decode_sequences` pass can extend several of them, as llama-server's slots do.
    repack: let ggml's CPU backend repack weights into its interleaved layouts (llama.cpp's
    default; off only to measure what the repacked kernels are worth).

    A draft written on part of its target's vocabulary (`vocab_map`) speaks the target's
    ids: `vocab_size` is the target's, tokens are mapped in and logits out; `own_vocab_size`
    is the rows its head computes.
    """

    def __init__(self, path: str | os.PathLike, context: int = 4096, threads: int | None = None,
                 sequences: int = 1, repack: bool = True):
        llama = _llama()
        self.path = Path(path)
        if not self.path.is_file():
            raise DistillSpecError(f"GGUF file not found: {self.path}")
        llama.llama_backend_init()
        model_params = llama.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model_params.use_extra_bufts = repack
        self._model = llama.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            raise DistillSpecError(f"llama.cpp could not load {self.path}: not a GGUF file it can read "
                                   "(truncated or corrupt?)")
        self.threads = threads or os.cpu_count() or 1
        context_params = llama.llama_context_default_params()
        context_params.n_ctx = context
        context_params.n_batch = BATCH_TOKENS
        context_params.n_ubatch = BATCH_TOKENS
        context_params.n_threads = self.threads
        context_params.n_threads_batch = self.threads
        if sequences < 1:
            raise DistillSpecError(f"a llama.cpp context needs at least one sequence, got {sequences}")
        context_params.n_seq_max = sequences
        context_params.kv_unified = True  # every sequence may use the whole context
        self.sequences = sequences
        self._context = llama.llama_init_from_model(self._model, context_params)
        if not self._context:
            raise DistillSpecError(f"llama.cpp could not create a context of {context} positions for {self.path}")
        self._batch = llama.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._llama = llama  # from here on __del__ frees the model, context and batch, even after an error below
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.own_vocab_size = int(llama.llama_vocab_n_tokens(self._vocab))
        self.vocab_map = read_vocab_map(llama, self._model, self.path)
        if self.vocab_map is not None and self.vocab_map.draft_size != self.own_vocab_size:
            raise DistillSpecError(f"{self.path} maps {self.vocab_map.draft_size} tokens to its target's ids but has "
                                   f"{self.own_vocab_size}")
        self.vocab_size = self.own_vocab_size if self.vocab_map is None else self.vocab_map.target_size
        self.context_length = int(llama.llama_n_ctx(self._context))
        ends = [int(t) for t in (llama.llama_vocab_eos(self._vocab), llama.llama_vocab_eot(self._vocab)) if t >= 0]
        if self.vocab_map is not None:
            ends = [int(self.vocab_map.target_ids[t]) for t in ends]
        self.eos_token_ids = frozenset(ends)
        self.owner = None  # the LlamaCppLM whose call holds the context now
        self._held: list[list[int]] = [[] for _ in range(sequences)]  # the token ids each sequence holds

    def __del__(self) -> None:
        llama = getattr(self, "_llama", None)
        if llama is None:
            return
        llama.llama_batch_free(self._batch)
        llama.llama_free(self._context)
        llama.llama_model_free(self._model)

    def clear(self) -> None:
        """Forget every cached position (a new call starts)."""
        self._llama.llama_memory_clear(self._llama.llama_get_memory(self._context), True)
        self._held = [[] for _ in range(self.sequences)]

    def start_call(self) -> list[int]:
        """A new call starts on this model: every position is forgotten, none can be kept."""
        self.clear()
        return []

    def held_ids(self, sequence: int = 0) -> list[int]:
        """The token ids sequence `sequence` holds at positions 0, 1, ... (a copy)."""
        return list(self._held[sequence])

    def sequence(self, index: int, keep_prefix: bool = False) -> "LlamaCppSequence":
        """A view of this model that runs sequence `index` alone: a call opened on it clears
        and rolls back only that sequence, so calls on other sequences go on beside it.
        keep_prefix: a call keeps what the sequence holds of its prompt from the call before."""
        if not 0 <= index < self.sequences:
            raise ValueError(f"sequence {index} is outside 0..{self.sequences - 1}")
        return LlamaCppSequence(self, index, keep_prefix)

    def remove_after(self, length: int, sequence: int = 0) -> None:
        """Forget a sequence's positions from `length` on."""
        if not self._llama.llama_memory_seq_rm(self._llama.llama_get_memory(self._context), sequence, length, -1):
            raise RuntimeError(f"llama.cpp could not remove positions from {length} on (sequence {sequence})")
        del self._held[sequence][length:]

    def decode(self, tokens: list[int], start: int, num_logits: int) -> np.ndarray:
        """Feed `tokens` at positions start, start+1, ... of sequence 0; returns
        [num_logits, V] float32 logits after each of the last `num_logits` tokens."""
        return self.decode_sequences([(0, tokens, start, num_logits)])[0]

    def decode_sequences(self, parts: list[tuple[int, list[int], int, int]]) -> list[np.ndarray]:
        """Extend several sequences in as few llama_decode passes as the batch size allows.

        parts: (sequence id, tokens, start position, num_logits) each; returns for each part
        its [num_logits, V] float32 logits after its last `num_logits` tokens (copies:
        llama.cpp reuses its buffer). One pass over all of them costs about what a pass of
        that many tokens of one sequence costs: the weights are read once."""
        entries = []  # (part, sequence, position, token, wants logits)
        for index, (sequence, tokens, start, num_logits) in enumerate(parts):
            if not 0 <= sequence < self.sequences:
                raise ValueError(f"sequence {sequence} is outside 0..{self.sequences - 1}")
            if not 0 <= num_logits <= len(tokens):
                raise ValueError(f"num_logits must be in 0..{len(tokens)}, got {num_logits}")
            if start != len(self._held[sequence]):
                raise ValueError(f"sequence {sequence} holds {len(self._held[sequence])} positions; a pass cannot "
                                 f"start at {start}")
            if self.vocab_map is not None:
                tokens = self.vocab_map.to_draft(tokens)
            first_output = len(tokens) - num_logits
            entries.extend((index, sequence, start + i, token, i >= first_output) for i, token in enumerate(tokens))
        rows: list[list[np.ndarray]] = [[] for _ in parts]
        for sequence, tokens, _, _ in parts:
            self._held[sequence].extend(tokens)
        for offset in range(0, len(entries), BATCH_TOKENS):
            piece = entries[offset:offset + BATCH_TOKENS]
            self._fill_batch(piece)
            code = self._llama.llama_decode(self._context, self._batch)
            if code != 0:
                for sequence, _, start, _ in parts:  # nothing of a failed pass stays cached
                    self.remove_after(start, sequence)
                raise DistillSpecError(f"llama.cpp decode failed (code {code}) at position {piece[0][2]} of sequence "
                                       f"{piece[0][1]}; the context holds {self.context_length} positions in all")
            for batch_index, (part, _, _, _, wanted) in enumerate(piece):
                if wanted:
                    pointer = self._llama.llama_get_logits_ith(self._context, batch_index)
                    rows[part].append(np.ctypeslib.as_array(pointer, shape=(self.own_vocab_size,)).copy())
        logits = [np.stack(r) if r else np.zeros((0, self.own_vocab_size), np.float32) for r in rows]
        return logits if self.vocab_map is None else [self.vocab_map.to_target_rows(r) for r in logits]

    def _fill_batch(self, entries: list[tuple[int, int, int, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for index, (_, sequence, position, token, wanted) in enumerate(entries):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = wanted


def read_vocab_map(llama, model, path: Path) -> VocabMap | None:
    """The map to the target's ids of a GGUF written on part of its vocabulary (None for a
    whole vocabulary), from the file's metadata as llama.cpp read it."""
    size = _meta_value(llama, model, TARGET_SIZE_KEY)
    if size is None:
        return None
    arrays = {key: _meta_value(llama, model, key) for key in (TARGET_IDS_KEY, FED_AS_KEY)}
    missing = [key for key, value in arrays.items() if value is None]
    if missing:
        raise DistillSpecError(f"{path} has {TARGET_SIZE_KEY} but not {', '.join(missing)}: "
                               "a broken reduced vocabulary")
    vocab_map = VocabMap(decode_ids(arrays[TARGET_IDS_KEY]), decode_ids(arrays[FED_AS_KEY]))
    if vocab_map.target_size != int(size):
        raise DistillSpecError(f"{path} maps {vocab_map.target_size} target ids, not {size}: "
                               "a broken reduced vocabulary")
    return vocab_map


def _meta_value(llama, model, key: str) -> str | None:
    """A metadata value of a loaded model, as text (None when absent); strings come whole."""
    buffer = ctypes.create_string_buffer(128)
    length = llama.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    if length >= len(buffer):
        buffer = ctypes.create_string_buffer(length + 1)
        length = llama.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return None if length < 0 else buffer.value.decode()


class LlamaCppSequence:
    """One sequence of a multi-sequence LlamaCppModel, with the calls a LlamaCppLM makes of a
    model (`LlamaCppModel.sequence`); anything else (vocabulary, path, context size, EOS) is
    the model's. Several of them are what llama-server calls slots."""

    def __init__(self, model: LlamaCppModel, index: int, keep_prefix: bool = False):
        self.model, self.index, self.keep_prefix = model, index, keep_prefix
        self.owner = None

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def clear(self) -> None:
        self.model.remove_after(0, self.index)

    def start_call(self) -> list[int]:
        """A new call starts on this sequence: the ids it may keep (its first pass keeps their
        common prefix with its tokens), or none after clearing the sequence."""
        if self.keep_prefix:
            return self.model.held_ids(self.index)
        self.clear()
        return []

    def held_ids(self) -> list[int]:
        return self.model.held_ids(self.index)

    def remove_after(self, length: int) -> None:
        self.model.remove_after(length, self.index)

    def decode(self, tokens: list[int], start: int, num_logits: int) -> np.ndarray:
        return self.model.decode_sequences([(self.index, tokens, start, num_logits)])[0]


class LlamaCppLM:
    """One generation call's view of a LlamaCppModel, with `kv.CachedLM`'s interface.

    `length` is the number of positions cached; `forward` appends tokens and returns the
    logits of the last few; `rollback` forgets positions past a length. Creating one clears
    the model's context: the call before it can no longer use it (`owner`). On a sequence
    view that keeps its prefix, the first pass instead keeps the positions whose ids it
    would feed again (`reused` counts them) and feeds only the rest.

    vocab_size: slice logits to this many entries. head_token_ids: only these ids keep their
    logits (a truncated head); every other id gets -inf, i.e. probability zero, which keeps
    rejection sampling exact.
    """

    device = torch.device("cpu")

    def __init__(self, model: LlamaCppModel, vocab_size: int | None = None,
                 head_token_ids: torch.Tensor | None = None):
        self.model = model
        self.vocab_size = vocab_size
        self.head_token_ids = None if head_token_ids is None else torch.as_tensor(head_token_ids, dtype=torch.long)
        self.keepable = model.start_call()  # ids the model still holds, for the first pass to keep
        model.owner = self
        self.length = 0
        self.reused = 0  # positions the first pass kept from the call before
        self.forward_passes = 0
        self.tokens_processed = 0

    def _check_owner(self) -> None:
        if self.model.owner is not self:
            raise RuntimeError("this llama.cpp context was taken by a later generation call")

    def forward(self, new_ids: torch.Tensor, num_logits: int = 1) -> torch.Tensor:
        """Append `new_ids` ([n] long) and return logits after each of the last `num_logits`:
        [num_logits, V] float32; row i predicts the token after position length - num_logits + i."""
        start, tokens = self.pass_tokens(new_ids, num_logits)
        return self.take(start, tokens, self.model.decode(tokens, start, num_logits))

    def pass_tokens(self, new_ids: torch.Tensor, num_logits: int) -> tuple[int, list[int]]:
        """The checked (start position, tokens to feed) of a `forward` (`batched_forward`
        feeds several at once): a first pass keeps what it can (`keep_held_prefix`)."""
        self._check_owner()
        tokens = [int(t) for t in new_ids.reshape(-1).tolist()]
        if not 1 <= num_logits <= len(tokens):
            raise ValueError(f"num_logits must be in 1..{len(tokens)}, got {num_logits}")
        if self.length + len(tokens) > self.model.context_length:
            raise DistillSpecError(f"{self.length + len(tokens)} positions do not fit the llama.cpp context of "
                                   f"{self.model.context_length}")
        kept = self.keep_held_prefix(tokens, num_logits)
        return self.length, tokens[kept:]

    def keep_held_prefix(self, tokens: list[int], num_logits: int) -> int:
        """Before the call's first pass, how many leading `tokens` the model still holds from
        the call before: their positions stay and become this call's first (`length`),
        everything after them is removed. At least `num_logits` tokens are always left to
        feed: their logits are computed by the pass. Later, 0."""
        if self.length or not self.keepable:
            return 0
        kept = keepable_prefix(self.keepable, tokens, num_logits)
        self.model.remove_after(kept)
        self.keepable, self.reused, self.length = [], kept, kept
        return kept

    def resume(self, prompt: list[int]) -> int:
        """Keep what the model holds of `prompt` now, before any pass (all of it but its last
        token at most), so that a caller can see how much of it is left to feed; returns the
        positions kept."""
        self._check_owner()
        return self.keep_held_prefix([int(t) for t in prompt], 1)

    def take(self, start: int, tokens: list[int], rows: np.ndarray) -> torch.Tensor:
        """Record a pass that fed `tokens` from position `start` and whose logits are `rows`
        ([num_logits, V]); returns them sliced and masked as `forward` does."""
        logits = torch.from_numpy(rows)
        self.length = start + len(tokens)
        self.forward_passes += 1
        self.tokens_processed += len(tokens)
        if self.head_token_ids is not None:
            kept = logits[:, self.head_token_ids]
            logits = torch.full_like(logits, float("-inf"))
            logits[:, self.head_token_ids] = kept
        return logits if self.vocab_size is None else logits[:, : self.vocab_size]

    def rollback(self, length: int) -> None:
        """Keep the first `length` positions."""
        self._check_owner()
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: the cache holds {self.length} positions")
        if length < self.length:
            self.model.remove_after(length)
        self.length = length



def batched_forward(lms: list[LlamaCppLM], requests: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """`lm.forward(new_ids, num_logits)` for each pair, the passes of calls on sequences of
    one model made as one `decode_sequences` (the weights are read once for all of them).
    Each LlamaCppLM must run on its own sequence view of that model."""
    if not lms:
        return []
    models = {id(getattr(lm.model, "model", lm.model)) for lm in lms}
    indices = [getattr(lm.model, "index", 0) for lm in lms]
    if len(models) != 1 or len(set(indices)) != len(indices):
        raise ValueError("batched_forward needs calls on distinct sequences of one model")
    planned = [lm.pass_tokens(ids, n) for lm, (ids, n) in zip(lms, requests)]
    parts = [(index, t, start, n) for index, (start, t), (_, n) in zip(indices, planned, requests)]
    rows = getattr(lms[0].model, "model", lms[0].model).decode_sequences(parts)
    return [lm.take(start, t, r) for lm, (start, t), r in zip(lms, planned, rows)]
