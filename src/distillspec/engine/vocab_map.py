"""A draft whose vocabulary is part of the target's: ids in, distributions out.

Why: a small draft's output head is a large share of its step. Qwen2.5's 151,936-row head
is a quarter of the 0.5B's weights and over 40% of a 12-block cut's, and llama.cpp checks
the head's rows against the vocabulary, so a head can be cut only with the vocabulary.
A GGUF draft written on the K tokens it may propose (`models.gguf_vocab`) carries the map
back to the target's ids, and the backend speaks target ids on both sides:
- tokens fed to the draft become its own ids; a target token the draft does not have
  becomes a stand-in chosen when the file was written (the longest kept token its text
  starts with: the draft reads a near neighbour there, a loss of accuracy, never of
  exactness);
- its logits go back to the target's rows, every missing id at -inf: probability zero,
  which rejection sampling handles exactly (the target's residual covers those tokens).

Pure numpy: no model, no file.
"""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

from ..errors import DistillSpecError

#: GGUF metadata keys of a reduced vocabulary (llama.cpp ignores keys it does not know).
#: The id arrays are strings (`encode_ids`): llama.cpp's metadata calls return a string
#: whole, while parsing a 151,936-entry GGUF array with gguf-py takes seconds a load.
TARGET_IDS_KEY = "distillspec.vocab.target_ids"  # [K]: the target's id of each draft id
TARGET_SIZE_KEY = "distillspec.vocab.target_size"  # rows of the target's vocabulary
FED_AS_KEY = "distillspec.vocab.fed_as"  # [target_size]: the draft id fed for each target id


def encode_ids(ids: Sequence[int]) -> str:
    """Token ids as one metadata string: base64 of little-endian uint32."""
    return base64.b64encode(np.asarray(ids, dtype="<u4").tobytes()).decode("ascii")


def decode_ids(text: str) -> np.ndarray:
    """`encode_ids`'s inverse: [n] int64."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:
        raise DistillSpecError("a reduced vocabulary's id list is not base64: the file is damaged") from None
    if len(raw) % 4:
        raise DistillSpecError("a reduced vocabulary's id list is not whole uint32s: the file is damaged")
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


class VocabMap:
    """The draft ids of a reduced vocabulary and the target ids they stand for.

    target_ids: [K] the target id of draft id 0..K-1, distinct, each in 0..target_size-1.
    fed_as: [target_size] the draft id fed for each target id: its own for the K, a
    stand-in for the rest.
    """

    def __init__(self, target_ids: Sequence[int], fed_as: Sequence[int]):
        ids = np.asarray(target_ids, dtype=np.int64).reshape(-1)
        fed_as = np.asarray(fed_as, dtype=np.int64).reshape(-1)
        target_size = fed_as.size
        if ids.size == 0:
            raise DistillSpecError("a reduced vocabulary needs at least one token")
        if ids.min() < 0 or ids.max() >= target_size:
            raise DistillSpecError(f"reduced vocabulary ids must be in 0..{target_size - 1}; got "
                                   f"{int(ids.min())}..{int(ids.max())}")
        if np.unique(ids).size != ids.size:
            raise DistillSpecError("reduced vocabulary ids must be distinct")
        if fed_as.min() < 0 or fed_as.max() >= ids.size:
            raise DistillSpecError(f"the draft ids fed for target ids must be in 0..{ids.size - 1}; got "
                                   f"{int(fed_as.min())}..{int(fed_as.max())}")
        if not np.array_equal(fed_as[ids], np.arange(ids.size)):
            raise DistillSpecError("a kept token must be fed as itself")
        self.target_ids = ids
        self.target_size = int(target_size)
        self._draft_of = fed_as
        self._covered = np.zeros(self.target_size, dtype=bool)
        self._covered[ids] = True

    @property
    def draft_size(self) -> int:
        return int(self.target_ids.size)

    def to_draft(self, tokens: Sequence[int]) -> list[int]:
        """Target ids -> the draft ids fed for them (a stand-in for ids it lacks)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.target_size):
            bad = tokens[(tokens < 0) | (tokens >= self.target_size)]
            raise DistillSpecError(f"token ids {bad[:5].tolist()} are outside the target's vocabulary "
                                   f"0..{self.target_size - 1}")
        return self._draft_of[tokens].tolist()

    def covers(self, tokens: Sequence[int]) -> np.ndarray:
        """[n] bool: which target ids the draft has (and can propose)."""
        return self._covered[np.asarray(tokens, dtype=np.int64)]

    def to_target_rows(self, rows: np.ndarray) -> np.ndarray:
        """rows: [n, K] draft logits -> [n, target_size] float32, -inf at every id the draft lacks."""
        if rows.ndim != 2 or rows.shape[1] != self.draft_size:
            raise ValueError(f"expected logits of shape [n, {self.draft_size}], got {tuple(rows.shape)}")
        out = np.full((rows.shape[0], self.target_size), -np.inf, dtype=np.float32)
        for row, logits in zip(out, rows):  # a 1-d scatter per row: numpy scatters 2-d slower (cheap-draft.md s. 10)
            row[self.target_ids] = logits
        return out
