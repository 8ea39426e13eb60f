"""A LoRA draft adapter merged into its base GGUF, written as a GGUF that llama.cpp loads.

Why: a distilled draft is trained in torch as a LoRA adapter over a published GGUF, but on a
CPU it runs in llama.cpp, which loads GGUF files. The export starts from the base GGUF
itself, not from a torch model: every tensor and metadata key (tokenizer, chat template,
architecture) is carried over from the file the adapter was trained on, and only the
adapted projection matrices change, by the adapter's low-rank product. The result is then
quantized by llama.cpp's own quantizer (`llama_model_quantize`), by default to the base
file's own type, so the draft costs per token what the stock draft costs.

Steps: base GGUF -> (dequantize, add scale * B @ A to each adapted matrix) -> F16 GGUF in
a temporary file -> llama.cpp quantization -> the output, renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..atomic import temporary_path_for
from ..choices import GGUF_TYPES
from ..errors import DistillSpecError
from .adapters import PEFT_CONFIG, PEFT_WEIGHTS, adapter_base_spec, is_adapter_folder

#: architectures whose GGUF stores q/k projections with rows reordered for llama.cpp's rope
#: (HF -> GGUF conversion interleaves each head's two halves); others store them as HF does
ROPE_PERMUTED_ARCHS = frozenset({"llama"})
#: architectures whose HF tensor layout equals GGUF's for the adapted projections
DIRECT_ARCHS = frozenset({"qwen2", "qwen3", "gemma3", "mistral"})
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def lora_delta(lora_a: np.ndarray, lora_b: np.ndarray, scale: float) -> np.ndarray:
    """The weight change an adapter makes: scale * B @ A.
    lora_a: [r, in]; lora_b: [out, r]; returns [out, in] float32."""
    return scale * (lora_b.astype(np.float32) @ lora_a.astype(np.float32))


def rope_row_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of an HF q/k projection in the order llama's GGUF stores them: within each head,
    the first and second halves of the rotary dimensions interleaved.
    weight: [heads * head_dim, in] -> the same shape."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def adapter_deltas(folder: Path) -> dict[str, np.ndarray]:
    """HF module name ('model.layers.0.self_attn.q_proj') -> its [out, in] weight change."""
    config = json.loads((folder / PEFT_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise DistillSpecError(f"{folder}: only plain LoRA adapters can be exported to GGUF (found "
                               f"{config.get('peft_type')}{', DoRA' if config.get('use_dora') else ''})")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
        raise DistillSpecError(f"{folder}: adapters with per-module ranks, alphas or saved modules cannot be exported")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (rank ** 0.5) if config.get("use_rslora") else alpha / rank
    weights = _float32_weights(folder / PEFT_WEIGHTS)
    deltas = {}
    for key in weights:
        if key.endswith(LORA_A):
            module = key[: -len(LORA_A)]
            if module + LORA_B not in weights:
                raise DistillSpecError(f"{folder}: {key} has no matching lora_B tensor")
            deltas[module.removeprefix("base_model.model.")] = lora_delta(weights[key], weights[module + LORA_B], scale)
        elif not key.endswith(LORA_B):
            raise DistillSpecError(f"{folder}: tensor {key} is not a LoRA factor; cannot export it to GGUF")
    if not deltas:
        raise DistillSpecError(f"{folder}: the adapter holds no LoRA tensors")
    return deltas


def _float32_weights(path: Path) -> dict[str, np.ndarray]:
    """safetensors tensors as float32 numpy (numpy has no bfloat16, so read through torch)."""
    from safetensors.torch import load_file

    return {key: value.float().numpy() for key, value in load_file(str(path)).items()}


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _gguf_names(reader, deltas: dict[str, np.ndarray]) -> dict[str, str]:
    """HF module name -> GGUF tensor name, by gguf-py's own name map for the architecture."""
    import gguf

    arch = _field(reader, "general.architecture")
    if arch not in DIRECT_ARCHS | ROPE_PERMUTED_ARCHS:
        raise DistillSpecError(f"exporting adapters on {arch!r} models is not supported; supported: "
                               f"{', '.join(sorted(DIRECT_ARCHS | ROPE_PERMUTED_ARCHS))}")
    arch_ids = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
    name_map = gguf.get_tensor_name_map(arch_ids[arch], int(_field(reader, f"{arch}.block_count")))
    names = {}
    for module in deltas:
        name = name_map.get_name(module)
        if name is None:
            raise DistillSpecError(f"adapter module {module} has no GGUF tensor in a {arch} model")
        names[module] = name + ".weight"
    return names


def _rope_heads(reader, gguf_name: str) -> int | None:
    """For a llama-ordered q or k projection, its head count (None: rows not reordered)."""
    arch = _field(reader, "general.architecture")
    if arch not in ROPE_PERMUTED_ARCHS:
        return None
    if gguf_name.endswith("attn_q.weight"):
        return int(_field(reader, f"{arch}.attention.head_count"))
    if gguf_name.endswith("attn_k.weight"):
        return int(_field(reader, f"{arch}.attention.head_count_kv", _field(reader, f"{arch}.attention.head_count")))
    return None


def write_merged_f16(base: Path, deltas: dict[str, np.ndarray], out: Path, name: str) -> None:
    """The base GGUF with every delta added, matrices in F16 (1-D tensors stay F32)."""
    import gguf

    reader = gguf.GGUFReader(base)
    names = _gguf_names(reader, deltas)
    by_tensor = {names[module]: delta for module, delta in deltas.items()}
    writer = gguf.GGUFWriter(str(out), _field(reader, "general.architecture"))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = name if field.name == gguf.Keys.General.NAME else field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    found = set()
    for tensor in reader.tensors:
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if tensor.name in by_tensor:
            delta = by_tensor[tensor.name]
            heads = _rope_heads(reader, tensor.name)
            if delta.shape != weight.shape:
                raise DistillSpecError(f"adapter change for {tensor.name} has shape {delta.shape}, the base "
                                       f"tensor {weight.shape}: the adapter was trained on another model")
            weight = weight + (delta if heads is None else rope_row_order(delta, heads))
            found.add(tensor.name)
        writer.add_tensor(tensor.name, weight.astype(np.float16 if weight.ndim > 1 else np.float32))
    missing = sorted(set(by_tensor) - found)
    if missing:
        raise DistillSpecError(f"the base GGUF has no tensor {missing[0]} that the adapter changes")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def base_file_type(path: Path) -> int:
    import gguf

    return int(_field(gguf.GGUFReader(path), gguf.Keys.General.FILE_TYPE, int(gguf.LlamaFileType.MOSTLY_F16)))


def llama_quantize(source: Path, out: Path, file_type: int) -> None:
    """llama.cpp's quantizer: `source` (F16 GGUF) -> `out` as LLAMA_FTYPE `file_type`."""
    from ..engine.llamacpp import _llama

    llama = _llama()
    params = llama.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = os.cpu_count() or 1
    code = llama.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0:
        raise DistillSpecError(f"llama.cpp could not quantize {source} (code {code})")


def file_type_code(gguf_type: str, base: Path) -> int | None:
    """LLAMA_FTYPE value of a GGUF_TYPES name (None: f16, written without quantization)."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise DistillSpecError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    if gguf_type == "f16":
        return None
    if gguf_type == "base":
        return base_file_type(base)
    return int(gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"])


def cached_adapter_gguf(folder, gguf_type: str = "base") -> Path:
    """The adapter merged into its base as a GGUF in the cache folder, exported on first use
    (about a minute for a 0.5B base) and named by the adapter's and the base's digests, so an
    edited adapter is exported again."""
    from .gguf_convert import cache_root, file_fingerprint

    folder = Path(folder)
    base = adapter_base_gguf(folder)
    digest = f"{file_fingerprint(folder / PEFT_WEIGHTS)[:8]}-{file_fingerprint(base)[:8]}"
    out = cache_root() / "gguf-export" / f"{folder.resolve().name}-{digest}-{gguf_type}.gguf"
    if not out.is_file():
        export_adapter_gguf(folder, out, gguf_type)
    return out


def adapter_base_gguf(folder: Path) -> Path:
    """The GGUF file an adapter folder was trained on; refuses a folder that is no adapter
    and an adapter whose base is not a GGUF."""
    from .load import gguf_source

    if not is_adapter_folder(folder):
        raise DistillSpecError(f"{folder} is not a distillspec adapter folder (no {PEFT_CONFIG} and adapter info)")
    base = gguf_source(adapter_base_spec(folder))
    if base is None:
        raise DistillSpecError(f"the adapter's base {adapter_base_spec(folder)!r} is not a GGUF model; "
                               "export its merged HF folder instead (export-draft)")
    return base


def export_adapter_gguf(folder, out, gguf_type: str = "base") -> Path:
    """Write the adapter in `folder` merged into its base model as a GGUF file `out`."""
    folder, out = Path(folder), Path(out)
    base = adapter_base_gguf(folder)
    file_type = file_type_code(gguf_type, base)
    deltas = adapter_deltas(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = temporary_path_for(out)
    try:
        write_merged_f16(base, deltas, merged, f"{base.stem} + {folder.name}")
        if file_type is None:
            merged.replace(out)
        else:
            quantized = temporary_path_for(out)
            try:
                llama_quantize(merged, quantized, file_type)
                quantized.replace(out)
            finally:
                quantized.unlink(missing_ok=True)
    finally:
        merged.unlink(missing_ok=True)
    return out
