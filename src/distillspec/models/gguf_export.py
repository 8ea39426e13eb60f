"""Distilled drafts written as GGUF files that llama.cpp loads: a LoRA adapter merged into
its base GGUF, or a fully trained draft (a layer cut) in its source GGUF's frame.

Why: a distilled draft is trained in torch as a LoRA adapter over a published GGUF, but on a
CPU it runs in llama.cpp, which loads GGUF files. The export starts from the base GGUF
itself, not from a torch model: every tensor and metadata key (tokenizer, chat template,
architecture) is carried over from the file the adapter was trained on, and only the
adapted projection matrices change, by the adapter's low-rank product. The result is then
quantized by llama.cpp's own quantizer (`llama_model_quantize`), by default to the base
file's own type, so the draft costs per token what the stock draft costs.

Steps: base GGUF -> (dequantize, add scale * B @ A to each adapted matrix) -> F16 GGUF in
a temporary file -> llama.cpp quantization -> the output, renamed into place.

A fully trained draft (`make-draft` cut, then distilled with every weight trained) has no
base tensors left to keep: its HF weights are written into the frame of the GGUF it was cut
from (`gguf_rewrite.write_f16_from_tensors`: same metadata and tokenizer, its own block
count), then quantized the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import temporary_path_for
from ..choices import GGUF_TYPES
from ..errors import DistillSpecError
from .adapters import PEFT_CONFIG, PEFT_WEIGHTS, adapter_base_spec, is_adapter_folder
from .draft_info import DRAFT_GGUF, draft_lineage, start_of
from .gguf_read import one_parse_per_file, read_gguf
from .gguf_rewrite import (architecture, copy_metadata, field, hf_to_gguf_names, llama_quantize, rope_heads,
                           rope_row_order, write_f16_from_tensors)

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def lora_delta(lora_a: np.ndarray, lora_b: np.ndarray, scale: float) -> np.ndarray:
    """The weight change an adapter makes: scale * B @ A.
    lora_a: [r, in]; lora_b: [out, r]; returns [out, in] float32."""
    return scale * (lora_b.astype(np.float32) @ lora_a.astype(np.float32))


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


def _gguf_names(reader, deltas: dict[str, np.ndarray]) -> dict[str, str]:
    """HF module name -> GGUF tensor name, by gguf-py's own name map for the architecture."""
    arch = architecture(reader)
    return hf_to_gguf_names(arch, int(field(reader, f"{arch}.block_count")), list(deltas))


def write_merged_f16(base: Path, deltas: dict[str, np.ndarray], out: Path, name: str) -> None:
    """The base GGUF with every delta added, matrices in F16 (1-D tensors stay F32)."""
    import gguf

    reader = read_gguf(base)
    names = _gguf_names(reader, deltas)
    by_tensor = {names[module]: delta for module, delta in deltas.items()}
    writer = gguf.GGUFWriter(str(out), field(reader, "general.architecture"))
    copy_metadata(reader, writer, name=name, file_type=int(gguf.LlamaFileType.MOSTLY_F16))
    found = set()
    for tensor in reader.tensors:
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if tensor.name in by_tensor:
            delta = by_tensor[tensor.name]
            heads = rope_heads(reader, tensor.name)
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

    return int(field(read_gguf(path), gguf.Keys.General.FILE_TYPE, int(gguf.LlamaFileType.MOSTLY_F16)))


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


def quantizer_types(gguf_type: str, head_type: str | None, base: Path) -> tuple[int | None, int | None]:
    """(LLAMA_FTYPE of the file, GGML type of its head) for llama.cpp's quantizer, from the
    names a user gives (`file_type_code`, `head_type_code`). Refuses a head type for an F16
    file: llama.cpp's quantizer leaves an F16 file's head as it is, so the request would be
    silently ignored."""
    file_type, head = file_type_code(gguf_type, base), head_type_code(head_type)
    if head is not None and file_type is None:
        raise DistillSpecError(f"--head-type {head_type} needs a quantized --gguf-type (not f16, which llama.cpp "
                               "writes with every tensor as is)")
    return file_type, head


#: key of an adapter's info naming the file types it runs fastest in on llama.cpp
LLAMACPP_EXPORT = "llamacpp_export"


def preferred_types(folder: Path, gguf_type: str | None, head_type: str | None) -> tuple[str, str | None]:
    """(file type, head type) to export an adapter to: those given, else the ones its info
    records as measured best on llama.cpp (`LLAMACPP_EXPORT`), else the base file's own."""
    from .adapters import read_adapter_info

    preferred = read_adapter_info(folder).get(LLAMACPP_EXPORT) or {}
    if gguf_type is None:
        gguf_type, head_type = preferred.get("gguf_type", "base"), head_type or preferred.get("head_type")
    return gguf_type, head_type


def cached_adapter_gguf(folder, gguf_type: str | None = None, head_type: str | None = None) -> Path:
    """The adapter merged into its base as a GGUF in the cache folder, exported on first use
    (about a minute for a 0.5B base) and named by the adapter's and the base's digests and
    the types (`preferred_types`), so an edited adapter is exported again. The file's sha256
    is recorded; one that fails the record is exported again (`built_once`)."""
    from .cache_integrity import built_once
    from .gguf_convert import cache_root, file_fingerprint

    folder = Path(folder)
    base = adapter_base_gguf(folder)
    gguf_type, head_type = preferred_types(folder, gguf_type, head_type)
    digest = f"{file_fingerprint(folder / PEFT_WEIGHTS)[:8]}-{file_fingerprint(base)[:8]}"
    types = gguf_type + ("" if head_type is None else f"-head-{head_type}")
    cached = cache_root() / "gguf-export" / f"{folder.resolve().name}-{digest}-{types}"
    cached.with_name(cached.name + ".gguf").unlink(missing_ok=True)  # where versions before the record kept it
    return built_once(cached, DRAFT_GGUF,
                      lambda tmp: export_adapter_gguf(folder, tmp / DRAFT_GGUF, gguf_type, head_type),
                      f"the GGUF of adapter {folder.name} merged into {base.name}")


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


@one_parse_per_file()
def export_adapter_gguf(folder, out, gguf_type: str = "base", head_type: str | None = None) -> Path:
    """Write the adapter in `folder` merged into its base model as a GGUF file `out`, of file
    type `gguf_type` ('base': the base's own) and head type `head_type` (None: llama.cpp's
    choice for the file type)."""
    folder, out = Path(folder), Path(out)
    base = adapter_base_gguf(folder)
    file_type, head = quantizer_types(gguf_type, head_type, base)
    deltas = adapter_deltas(folder)
    return written_and_quantized(out, lambda f16: write_merged_f16(base, deltas, f16, f"{base.stem} + {folder.name}"),
                                 file_type, head)


def written_and_quantized(out, write_f16: Callable[[Path], None], file_type: int | None,
                          head_type: int | None = None) -> Path:
    """`out`, a GGUF that `write_f16(path)` writes as F16 into a temporary sibling and
    llama.cpp's quantizer turns into LLAMA_FTYPE `file_type` (None: kept F16, renamed into
    place as written) with GGML type `head_type` for the head (None: the quantizer's choice;
    `quantizer_types` checks the pair). The temporary is removed whatever happens.

    Why one function: the adapter export, the full-draft export and the GGUF delta's rebuild
    all end this way, and the types must mean the same in each."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    f16 = temporary_path_for(out)
    try:
        write_f16(f16)
        if file_type is None:
            f16.replace(out)
        else:
            llama_quantize(f16, out, file_type, head_type=head_type)
    finally:
        f16.unlink(missing_ok=True)
    return out


def head_type_code(head_type: str | None) -> int | None:
    """GGML type value of a head type name ('q4_0', 'q8_0', ...; None stays None)."""
    import gguf

    if head_type is None:
        return None
    try:
        return int(gguf.GGMLQuantizationType[head_type.upper()])
    except KeyError:
        names = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType if t.name[0] in "QF")
        raise DistillSpecError(f"unknown head type {head_type!r}; choose a GGML type: {names}") from None


def model_tensors(folder: Path) -> dict[str, np.ndarray]:
    """An HF checkpoint folder's weights (every safetensors shard) as float32 numpy arrays."""
    shards = sorted(Path(folder).glob("*.safetensors"))
    if not shards:
        raise DistillSpecError(f"{folder} holds no safetensors weights")
    weights = {}
    for shard in shards:
        weights.update(_float32_weights(shard))
    return weights


def gguf_tensors_of(weights: dict[str, np.ndarray], template: Path) -> dict[str, np.ndarray]:
    """HF parameter name -> array, renamed to GGUF tensor names for `template`'s architecture.
    A head tied to the embedding is written where the template has a head of its own."""
    reader = read_gguf(template)
    arch = architecture(reader)
    blocks = 1 + max((int(k.split(".")[2]) for k in weights if k.startswith("model.layers.")), default=-1)
    names = hf_to_gguf_names(arch, max(blocks, 1), list(weights))
    tensors = {names[k]: v for k, v in weights.items()}
    has_head = any(t.name == "output.weight" for t in reader.tensors)
    if has_head and "output.weight" not in tensors and "token_embd.weight" in tensors:
        tensors["output.weight"] = tensors["token_embd.weight"]
    if not has_head:
        tensors.pop("output.weight", None)  # tied: the template reads its head from the embedding
    return tensors


@one_parse_per_file()
def export_model_gguf(folder, template, out, gguf_type: str = "base", head_type: str | None = None) -> Path:
    """A fully trained draft (an HF folder, e.g. a distilled layer cut) written as a GGUF in
    `template`'s frame (the GGUF it was cut from: metadata, tokenizer, tensor order) and
    quantized by llama.cpp: `gguf_type` for the file ('base': the template's own), and
    `head_type` (a GGML type name such as 'q4_0'; None: llama.cpp's choice) for its head."""

    folder, template, out = Path(folder), Path(template), Path(out)
    file_type, head = quantizer_types(gguf_type, head_type, template)
    tensors = gguf_tensors_of(model_tensors(folder), template)
    return written_and_quantized(
        out, lambda f16: write_f16_from_tensors(template, tensors, f16, f"{template.stem} cut, {folder.name}"),
        file_type, head)


def gguf_template_of(folder) -> Path:
    """The GGUF a full draft folder was cut from: its info's `source` (`make-draft`), or, for a
    distilled draft, the source of the draft its recipe started from (`draft_lineage`).
    Refuses a draft whose lineage ends in no GGUF, saying what to pass instead."""
    from .load import gguf_source

    last, info = draft_lineage(folder)[-1]
    start = start_of(info)
    if start is None:
        raise DistillSpecError(f"{last} does not record the model it was cut from; give the GGUF to write it in "
                               "(--gguf-template)")
    path = None if Path(start).is_dir() else gguf_source(start)
    if path is None:
        raise DistillSpecError(f"{last} was cut from {start!r}, which is not a GGUF model; give one to write it "
                               "in (--gguf-template)")
    return path
