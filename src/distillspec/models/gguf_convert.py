"""GGUF files dequantized once into cached fp32 Hugging Face folders.

Why a cache: transformers reads a GGUF by parsing its metadata and dequantizing every
tensor in Python, which costs about a minute for the 0.5B and two for the 1.5B on a 2-core
CPU. The result is kept under ``$DISTILLSPEC_CACHE`` (default ``~/.cache/distillspec``) in a
folder named after the file's content hash. It is written under a temporary name and
renamed into place, so an interrupted conversion never leaves a half-written folder that
later loads.

Why it is shaped the way it is (each choice measured; the figures are in docs/archive):
- transformers builds a `gguf.GGUFReader` once for the tokenizer and twice for the model.
  Parsing a 151,936-token vocabulary and its merges costs seconds each time, so
  `gguf_read.one_parse_per_file` keeps one reader per file for the whole conversion;
- a GGUF-loaded model refuses `save_pretrained`, so the weights move into a plain model
  built without random initialization and by assignment, not copy, so the fp32 weights are
  in memory once;
- `convert_in_parallel` converts several models at once (the largest here, the others in
  worker processes): the work is single-threaded Python and numpy, so two files take about
  as long as the larger one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ..errors import DistillSpecError, DistillSpecWarning
from .gguf_read import one_parse_per_file
from .hub import hub_offline
from .cache_integrity import manifest_problem, remove_stale_temporaries, temporary_prefix, write_manifest
from .packaged import check_free_space

#: bytes of the dequantized fp32 folder per byte of a (4-5 bit) GGUF, for the free-space check
DEQUANTIZED_GROWTH = 8
#: bytes of memory a conversion holds at its peak per byte of the GGUF: the fp32 weights once,
#: the memory-mapped file, and numpy's dequantization buffers (measured peak RSS, rounded up)
CONVERSION_MEMORY_GROWTH = 10


def cache_root() -> Path:
    return Path(os.environ.get("DISTILLSPEC_CACHE") or Path.home() / ".cache" / "distillspec")


def file_fingerprint(path: Path, chunk: int = 1 << 22) -> str:
    """The start of the file's sha256; read from the `.sha256` file that assembly writes
    beside a verified file, so a 1 GB model is not hashed again at every load."""
    recorded = path.with_name(path.name + ".sha256")
    if recorded.is_file():
        return recorded.read_text().strip()[:16]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def gguf_cache_dir(gguf_path: Path) -> Path:
    return cache_root() / "gguf" / f"{gguf_path.stem}-{file_fingerprint(gguf_path)}"


def is_converted(gguf_path: Path) -> bool:
    """Whether the cached folder is there and matches its integrity record."""
    final = gguf_cache_dir(gguf_path)
    return (final / "config.json").is_file() and manifest_problem(final) is None


def discard_damaged(final: Path, gguf_path: Path) -> None:
    """Remove a cached folder that fails its integrity check, saying why (a warning)."""
    problem = manifest_problem(final)
    if problem is None:
        return
    warnings.warn(f"the converted cache {final} is damaged ({problem}); converting {gguf_path.name} again",
                  DistillSpecWarning, stacklevel=3)
    doomed = final.with_name(f"{temporary_prefix(final)}damaged")
    os.rename(final, doomed)  # out of the way at once; a crash here leaves a stale temporary, removed later
    shutil.rmtree(doomed, ignore_errors=True)


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file into a cached fp32 HF folder (once) and return that folder.
    A cached folder that fails its integrity record is converted again (`cache_integrity`)."""
    final = gguf_cache_dir(gguf_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    if final.exists():
        discard_damaged(final, gguf_path)
    if (final / "config.json").is_file():
        return final
    check_free_space(final.parent, gguf_path.stat().st_size * DEQUANTIZED_GROWTH, f"converting {gguf_path.name}")
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final), dir=final.parent))
    try:
        write_dequantized(gguf_path, tmp)
        write_manifest(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # someone else won the race if it is
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_dequantized(gguf_path: Path, out_dir: Path) -> None:
    """Write the GGUF's model (fp32) and tokenizer into `out_dir` as a plain HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with one_parse_per_file(), hub_offline():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # the gguf reader raises many kinds on a corrupt file
        raise DistillSpecError(f"could not read GGUF file {gguf_path}: {exc}") from None
    plain = plain_copy(loaded)
    del loaded
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "distillspec-source.json").write_text(json.dumps({"gguf": str(gguf_path)}))


def plain_copy(loaded):
    """The same weights (the same tensors, not copies) in a model without GGUF quantization
    config, which `save_pretrained` accepts; built without random initialization."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _skipped_initialization():
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain.eval()


def _skipped_initialization():
    """transformers' context that skips weight initialization (its home moved across
    versions); none when it cannot be found, which only costs time."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _convert_in_worker(gguf_path: str) -> str:
    torch.set_num_threads(1)  # the conversion in the parent has the other core
    return str(convert_gguf(Path(gguf_path)))


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def conversion_workers(gguf_paths: list[Path]) -> int:
    """How many conversions to run at once: one per CPU core, as many as memory holds."""
    pending = sorted((p.stat().st_size * CONVERSION_MEMORY_GROWTH for p in gguf_paths), reverse=True)
    budget, workers = available_memory(), 0
    for need in pending[: max(1, os.cpu_count() or 1)]:
        if need > budget:
            break
        budget -= need
        workers += 1
    return max(1, workers)


def convert_in_parallel(gguf_paths: list[Path]) -> list[Path]:
    """Convert every file not yet converted, several at once where cores and memory allow;
    returns the cached folders in the order given.

    The largest file converts in this process, which has imported torch and transformers
    already; the others go to worker processes, whose own (slow) imports then overlap it.
    """
    pending = sorted((p for p in dict.fromkeys(gguf_paths) if not is_converted(p)),
                     key=lambda p: p.stat().st_size, reverse=True)
    workers = conversion_workers(pending) if pending else 1
    if len(pending) > 1 and workers > 1:
        # spawn, not fork: a forked copy of a process whose OpenMP threads have run can hang
        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
            others = pool.map(_convert_in_worker, [str(p) for p in pending[1:]])
            convert_gguf(pending[0])
            list(others)
    else:
        for path in pending:
            convert_gguf(path)
    return [gguf_cache_dir(p) for p in gguf_paths]
