"""A disk cache of off-policy completions and the target's top-k log-probabilities on them.

For fixed and target-generated data the target's distribution on an example never changes,
so it is computed once: the completion (the data set's reference, or one sample from the
target) and, at each completion position, the target's k most likely tokens with their
log-probabilities (`divergences.sparse_teacher`). Later epochs and runs comparing
divergences read the cache and run no target forward at all.

Layout: `cache_info.json` (what the contents depend on: a run with different settings is
refused) and one safetensors file per *fill* - the examples of one micro-batch that were
missing, generated and scored together, written atomically. Fills are all-or-nothing, so
after an interruption the replayed micro-batch finds exactly the same examples missing as
the uninterrupted run did, draws them with the same seed, and resume stays exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import DistillSpecError

CACHE_INFO = "cache_info.json"
#: DistillConfig fields that decide what the cache holds (divergence, lr, steps... do not)
KEY_FIELDS = ("target", "target_dtype", "prompts", "prompt_limit", "chat", "max_prompt_tokens", "max_new_tokens",
              "heldout_fraction", "off_policy_source_used", "sample_temperature", "seed", "teacher_top_k")


@dataclass
class CachedTeacher:
    """One example's completion and the target's top-k on it.

    completion: [C] long; ids: [C, k] long; log_probs: [C, k] float32, where row j is the
    target's distribution for the token at completion position j (given everything before).
    """

    completion: torch.Tensor
    ids: torch.Tensor
    log_probs: torch.Tensor


def cache_key(config) -> dict:
    values = config.to_dict()
    values["off_policy_source_used"] = config.off_policy()
    key = {name: values[name] for name in KEY_FIELDS}
    if config.teacher_backend != "torch":  # torch's caches predate the key and stay valid without it
        key["teacher_backend"] = config.teacher_backend
    return key


class TeacherCache:
    """Cached teachers by training-example index, in `folder`.

    Each process (`rank`) reads and writes only its own fills, so a run under several
    processes resumes exactly too (a rank never sees an entry it would not have made).
    """

    def __init__(self, folder: Path, key: dict, rank: int = 0):
        self.folder = Path(folder)
        self.key, self.rank = key, rank
        self.entries: dict[int, CachedTeacher] = {}
        self.forwards = 0  # target forwards run to fill the cache (tests read this)
        self._open()

    def _open(self) -> None:
        info_path = self.folder / CACHE_INFO
        if info_path.is_file():
            stored = json.loads(info_path.read_text())
            differing = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
            if differing:
                detail = ", ".join(f"{k}: cache {stored.get(k)!r} vs run {self.key.get(k)!r}" for k in differing)
                raise DistillSpecError(f"teacher cache {self.folder} was built for other settings ({detail}); "
                                       "use another teacher_cache folder or the same settings")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            info_path.write_text(json.dumps(self.key, indent=1))
        for path in sorted(self.folder.glob(f"fill-r{self.rank}-*.safetensors")):
            self.entries.update(_read_fill(path))

    def missing(self, indices: list[int]) -> list[int]:
        """Indices without an entry, in order and without repeats."""
        return list(dict.fromkeys(i for i in indices if i not in self.entries))

    def get(self, index: int) -> CachedTeacher:
        return self.entries[index]

    def add_fill(self, name: str, teachers: dict[int, CachedTeacher]) -> None:
        """Store the entries of one fill (atomically: all of them or none)."""
        tensors = {}
        for index, teacher in teachers.items():
            tensors[f"{index}.completion"] = teacher.completion.to(torch.int64).contiguous()
            tensors[f"{index}.ids"] = teacher.ids.to(torch.int32).contiguous()
            tensors[f"{index}.log_probs"] = teacher.log_probs.to(torch.float32).contiguous()
        final = self.folder / f"fill-r{self.rank}-{name}.safetensors"
        partial = final.with_name(final.name + ".partial")
        save_file(tensors, str(partial))
        os.replace(partial, final)
        self.entries.update(teachers)


def _read_fill(path: Path) -> dict[int, CachedTeacher]:
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise DistillSpecError(f"teacher cache file {path} is unreadable ({exc}); delete it to rebuild it") from None
    indices = sorted({int(name.split(".", 1)[0]) for name in tensors})
    return {i: CachedTeacher(tensors[f"{i}.completion"], tensors[f"{i}.ids"].long(), tensors[f"{i}.log_probs"])
            for i in indices}


def teacher_rows(teachers: list[CachedTeacher], prompt_lengths: list[int], length: int,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example teachers laid out like a right-padded batch (`batches.build_batch`).

    A completion token at sequence position p is predicted at position p - 1, where the
    batch's loss mask is 1. Returns ids [B, length, k] long and log_probs [B, length, k]
    float32, zero where there is no completion token (the loss mask hides those).
    """
    ids = torch.zeros((len(teachers), length, k), dtype=torch.long)
    log_probs = torch.zeros((len(teachers), length, k), dtype=torch.float32)
    for row, (teacher, prompt_length) in enumerate(zip(teachers, prompt_lengths)):
        count = teacher.completion.numel()
        if count:
            ids[row, prompt_length - 1: prompt_length - 1 + count] = teacher.ids
            log_probs[row, prompt_length - 1: prompt_length - 1 + count] = teacher.log_probs
    return ids, log_probs
