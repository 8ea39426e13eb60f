"""A GGUF draft cut to part of its vocabulary: a truncated head that llama.cpp runs.

Why: the head of a small draft is a large share of its step (Qwen2.5's 151,936 rows are a
quarter of the 0.5B and over 40% of a 12-block cut), and llama.cpp checks a head's rows
against the vocabulary, so masking logits saves nothing there. This writes the draft again
on the K tokens it may propose: the tokenizer's lists, the embedding and the head keep only
those rows (copied byte for byte in their published types), the special-token ids are
renumbered, and the map back to the target's ids is stored in the file
(`engine.vocab_map`), which `LlamaCppModel` reads so that the loops see target ids only.
Target tokens the draft lacks are fed as a stand-in: the longest kept token their text
begins with (' coeff' for ' coefficient'), or, for a token that begins with no kept one,
the kept token whose embedding is nearest the mean of the dropped ones.

llama.cpp loads the file alone, but its own speculative decoding wants draft and target
vocabularies alike and refuses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_file
from ..engine.vocab_map import FED_AS_KEY, TARGET_IDS_KEY, TARGET_SIZE_KEY, encode_ids
from ..errors import DistillSpecError
from .draft_info import DRAFT_GGUF
from .gguf_read import read_gguf

#: tensors with one row per token
VOCAB_TENSORS = ("token_embd.weight", "output.weight")
#: tokenizer arrays with one entry per token
PER_TOKEN_FIELDS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
#: embedding rows dequantized at a time when choosing the stand-in
ROWS_PER_CHUNK = 8192
#: how the file is written (stand-ins, map encoding); a new one builds cached files again
WRITE_METHOD = 2


def checked_kept_ids(kept_ids: Sequence[int], vocab: int) -> np.ndarray:
    """`kept_ids` sorted, after checking they are distinct ids of a `vocab`-token vocabulary."""
    ids = np.asarray(sorted(int(i) for i in kept_ids), dtype=np.int64)
    if ids.size == 0 or ids[0] < 0 or ids[-1] >= vocab or np.unique(ids).size != ids.size:
        raise DistillSpecError(f"a reduced vocabulary needs distinct ids in 0..{vocab - 1}, got {ids.size} ids "
                               f"spanning {ids[:1].tolist()}..{ids[-1:].tolist()}")
    return ids


def kept_merges(merges: Sequence[str], kept_tokens: set[str]) -> list[str]:
    """The BPE merges ('a b') whose parts and result are all kept tokens: a tokenizer of the
    reduced vocabulary then never produces a token it lacks."""
    kept = []
    for merge in merges:
        left, _, right = merge.partition(" ")
        if left in kept_tokens and right in kept_tokens and left + right in kept_tokens:
            kept.append(merge)
    return kept


def fed_as_ids(tokens: Sequence[str], kept: np.ndarray, fallback: int) -> np.ndarray:
    """[len(tokens)] the draft id fed for each token: its own for the kept ones (`kept`,
    sorted ids), else the draft id of the longest kept token its text begins with, else
    `fallback` (a draft id)."""
    draft_of = {tokens[int(old)]: new for new, old in enumerate(kept)}
    longest = max(map(len, draft_of))
    fed = np.full(len(tokens), fallback, dtype=np.int64)
    for token_id, text in enumerate(tokens):
        for end in range(min(len(text), longest), 0, -1):
            found = draft_of.get(text[:end])
            if found is not None:
                fed[token_id] = found
                break
    fed[kept] = np.arange(kept.size)  # a kept token is fed as itself, even where two share a text
    return fed


def nearest_to_mean(kept_rows: np.ndarray, dropped_mean: np.ndarray) -> int:
    """The index of the kept embedding row (kept_rows: [K, d]) with the highest cosine to
    `dropped_mean` ([d]): what the draft reads for a token it lacks."""
    norms = np.linalg.norm(kept_rows, axis=1) * max(float(np.linalg.norm(dropped_mean)), 1e-12)
    return int(np.argmax(kept_rows @ dropped_mean / np.maximum(norms, 1e-12)))


def fallback_stand_in(tensor, kept: np.ndarray) -> int:
    """The stand-in draft id for tokens that begin with no kept token, of embedding `tensor`
    (a GGUFReader tensor, [V, d] rows in any GGML type), dequantized a chunk of rows at a
    time (a 151,936-row embedding is 0.5 GB in float32)."""
    from gguf.quants import dequantize

    rows = tensor.data.shape[0]
    dropped = np.ones(rows, dtype=bool)
    dropped[kept] = False
    if not dropped.any():
        return 0
    total, kept_rows = None, []
    for start in range(0, rows, ROWS_PER_CHUNK):
        chunk = dequantize(np.asarray(tensor.data[start:start + ROWS_PER_CHUNK]), tensor.tensor_type)
        chunk = chunk.reshape(chunk.shape[0], -1).astype(np.float32)
        part = chunk[dropped[start:start + ROWS_PER_CHUNK]].sum(axis=0)
        total = part if total is None else total + part
        kept_rows.append(chunk[~dropped[start:start + ROWS_PER_CHUNK]])
    return nearest_to_mean(np.concatenate(kept_rows), total / dropped.sum())


def write_vocab_subset(source: Path, kept_ids: Sequence[int], out: Path) -> Path:
    """`source` (a GGUF) written again on the tokens `kept_ids` only, with the map back to
    the source's ids (module docstring). Every other key and tensor is copied as it is."""
    import gguf

    from .gguf_rewrite import DROP_KEY, architecture, copy_metadata, field, write_out

    reader = read_gguf(source)
    arch = architecture(reader)
    if TARGET_SIZE_KEY in reader.fields:
        raise DistillSpecError(f"{source} already has a reduced vocabulary; reduce the file it was made from")
    tokens = field(reader, "tokenizer.ggml.tokens")
    kept = checked_kept_ids(kept_ids, len(tokens))
    new_id = {int(old): new for new, old in enumerate(kept)}
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise DistillSpecError(f"{source} has no token_embd.weight tensor")
    fed_as = fed_as_ids(tokens, kept, fallback_stand_in(tensors["token_embd.weight"], kept))
    kept_tokens = {tokens[i] for i in kept}
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)

        def on_kept_tokens(key: str, value):
            if key == f"{arch}.vocab_size":
                return len(kept)
            if key in PER_TOKEN_FIELDS:
                return [value[i] for i in kept]
            if key == "tokenizer.ggml.merges":
                return kept_merges(value, kept_tokens)
            if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
                # a special token the draft cannot propose is left out: llama.cpp falls back to none
                return new_id.get(int(value), DROP_KEY)
            return value

        copy_metadata(reader, writer, change=on_kept_tokens)
        writer.add_string(TARGET_IDS_KEY, encode_ids(kept))
        writer.add_uint32(TARGET_SIZE_KEY, len(tokens))
        writer.add_string(FED_AS_KEY, encode_ids(fed_as))
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.name in VOCAB_TENSORS:
                data = np.ascontiguousarray(data[kept])
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=tensor.tensor_type)
        write_out(writer)
    return out


def kept_ids_digest(kept_ids: Sequence[int]) -> str:
    """A short name for a set of kept ids (the cache folder of its reduced GGUF)."""
    return hashlib.sha256(np.asarray(sorted(kept_ids), dtype=np.int64).tobytes()).hexdigest()[:8]


def cached_vocab_subset(source: Path, kept_ids: Sequence[int]) -> Path:
    """`source` on the tokens `kept_ids`, built into the cache on first use (seconds for a
    0.5B) and reused, named by the source's and the ids' digests, sha256 recorded."""
    from .cache_integrity import built_once
    from .gguf_convert import cache_root, file_fingerprint

    source = Path(source)
    name = (f"{source.stem}-{file_fingerprint(source)[:8]}-vocab{len(kept_ids)}-{kept_ids_digest(kept_ids)}"
            f"-v{WRITE_METHOD}")
    return built_once(cache_root() / "gguf-vocab" / name, DRAFT_GGUF,
                      lambda tmp: write_vocab_subset(source, kept_ids, tmp / DRAFT_GGUF),
                      f"{source.parent.name}/{source.name} on {len(kept_ids)} tokens")
