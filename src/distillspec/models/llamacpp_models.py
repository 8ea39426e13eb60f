"""GGUF models opened with the llama.cpp backend, and the drafts that run beside them.

Why a module of its own: on this backend a model is the GGUF file as published (no
dequantization, no torch weights), so only specs that name a GGUF apply: the packaged
models, a .gguf path. Its tokenizer is transformers' reading of the same file (chat
template and decoding as on the torch backend), parsed once and kept in the cache folder.
A LoRA adapter folder is merged into its base GGUF and exported once (`gguf_export`), a
GGUF delta folder rebuilt over its base GGUF once (`gguf_delta`);
drafts built from the target's own torch layers (layer subsets, deltas) have no GGUF and
are refused with that said.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..engine.drafters import ModelDrafter, PromptLookupDrafter
from ..engine.llamacpp import LlamaCppModel
from ..errors import DistillSpecError
from .adapters import is_adapter_folder
from .gguf_convert import cache_root, file_fingerprint
from .gguf_delta import cached_gguf_delta, is_gguf_delta_folder
from .gguf_export import cached_adapter_gguf
from .gguf_vocab import cached_vocab_subset
from .hub import hub_offline
from .load import canonical_spec, gguf_source

#: positions a llama.cpp context holds: prompt plus reply (the real pair was trained on 32k)
DEFAULT_CONTEXT = 4096
def gguf_path_of(spec: str | os.PathLike) -> Path:
    """The GGUF file a spec names (assembled from its chunk packages if need be)."""
    path = gguf_source(spec)
    if path is None:
        raise DistillSpecError(f"{str(spec)!r} names no GGUF file; the llama.cpp backend runs GGUF models "
                               "(a packaged model name or a .gguf path); use --backend torch for HF folders")
    return path


def gguf_tokenizer(path: Path):
    """transformers' tokenizer of a GGUF file, saved in the cache on first use (parsing a
    151,936-token vocabulary from the GGUF costs seconds each time)."""
    from transformers import AutoTokenizer

    folder = cache_root() / "gguf-tokenizer" / f"{path.stem}-{file_fingerprint(path)}"
    with hub_offline():
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer.save_pretrained(folder)
        return tokenizer


def load_llamacpp_model(spec: str | os.PathLike, context: int = DEFAULT_CONTEXT,
                        threads: int | None = None, sequences: int = 1) -> tuple[LlamaCppModel, object]:
    """(model, tokenizer) for a GGUF spec on the llama.cpp backend. sequences: kept apart in
    its context (a server's slots), which then holds `context` positions for each."""
    path = gguf_path_of(spec)
    model = LlamaCppModel(path, context=context * sequences, threads=threads, sequences=sequences)
    if model.vocab_map is not None:
        raise DistillSpecError(f"{path} is written on part of its target's vocabulary; it can only be a draft")
    model.distillspec_spec = canonical_spec(spec)
    return model, gguf_tokenizer(path)


def draft_gguf_file(spec: str) -> Path:
    """The GGUF file llama.cpp runs for a draft model spec (no '@' modifiers): a published
    model or .gguf path as it is, an adapter folder merged into its base, a GGUF delta folder
    rebuilt over its base (both built once into the cache). Other tools that take a draft file
    (llama-server -md, llama-speculative-simple) get the same file through it."""
    if is_adapter_folder(spec):
        return cached_adapter_gguf(spec)
    if is_gguf_delta_folder(spec):
        return cached_gguf_delta(spec)
    if spec == "default" or spec.startswith("layers:") or Path(spec).is_dir():
        raise DistillSpecError(f"draft {spec!r} is built from the target's torch layers, which the llama.cpp backend "
                               "cannot run; give a GGUF draft (e.g. qwen2.5-coder-0.5b or a .gguf path), a LoRA "
                               "adapter folder, a GGUF delta folder, prompt-lookup, or --backend torch")
    return gguf_path_of(spec)


def llamacpp_drafter(spec: str, target: LlamaCppModel, head_token_ids=None):
    """A drafter for a llama.cpp target: prompt lookup, or a GGUF model (or an adapter or GGUF
    delta folder, built into one) run by llama.cpp too (same context size and threads as the target; they
    run one after the other). head_token_ids: the only tokens the draft may propose; its GGUF
    is written again on those tokens (`gguf_vocab`, cached), so its head computes only them."""
    if spec == "prompt-lookup":
        return PromptLookupDrafter()
    path = draft_gguf_file(spec)
    if head_token_ids is not None:
        path = cached_vocab_subset(path, [int(i) for i in head_token_ids])
    draft = LlamaCppModel(path, context=target.context_length, threads=target.threads,
                          sequences=getattr(target, "sequences", 1))
    if draft.vocab_size < target.vocab_size or (draft.vocab_map is not None and draft.vocab_size != target.vocab_size):
        raise DistillSpecError(f"the draft {path.name} speaks a vocabulary of {draft.vocab_size} tokens and the target "
                               f"{target.vocab_size}; they must share a tokenizer")
    return ModelDrafter(draft)
