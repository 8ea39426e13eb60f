"""GGUF files derived from a published one: a subset of its blocks, or new weights in its frame.

Why: a cheap draft for llama.cpp is the 0.5B cut to a few of its blocks, first as published
(to time it before training anything), then with the weights our torch trainer learned. In
both cases the published file is the frame: every metadata key (tokenizer, chat template,
architecture constants) is carried over and only the block count and the tensors change,
so llama.cpp and llama-server load the result as they load the original. Quantization is
left to llama.cpp's own quantizer (`llama_quantize`), which knows every GGML type.

Pure helpers (`block_of`, `renumbered`, `hf_to_gguf_names`) are separated from the writers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import atomic_file
from ..errors import DistillSpecError
from .gguf_read import read_gguf

#: architectures whose GGUF stores q/k projections with rows reordered for llama.cpp's rope
#: (HF -> GGUF conversion interleaves each head's two halves); others store them as HF does
ROPE_PERMUTED_ARCHS = frozenset({"llama"})
#: architectures whose HF tensor layout equals GGUF's
DIRECT_ARCHS = frozenset({"qwen2", "qwen3", "gemma3", "mistral"})
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def block_of(tensor_name: str) -> int | None:
    """'blk.7.attn_q.weight' -> 7; tensors outside the blocks (embedding, head) -> None."""
    match = _BLOCK.match(tensor_name)
    return None if match is None else int(match.group(1))


def renumbered(tensor_name: str, new_index: Mapping[int, int]) -> str | None:
    """The tensor's name in a cut keeping the blocks in `new_index` (old -> new), or None
    when its block is dropped."""
    block = block_of(tensor_name)
    if block is None:
        return tensor_name
    if block not in new_index:
        return None
    return _BLOCK.sub(f"blk.{new_index[block]}.", tensor_name, count=1)


def checked_layers(layers: Sequence[int], count: int) -> list[int]:
    """`layers` as a list, after checking that they name blocks of a `count`-block model
    increasing and distinct (the order a cut keeps them in)."""
    layers = list(layers)
    if not layers or sorted(set(layers)) != layers or not all(0 <= i < count for i in layers):
        raise DistillSpecError(f"layers {layers} must be increasing, distinct and in 0..{count - 1}")
    return layers


def rope_row_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of an HF q/k projection in the order llama's GGUF stores them: within each head,
    the first and second halves of the rotary dimensions interleaved.
    weight: [heads * head_dim, in] (or [heads * head_dim] for a bias) -> the same shape."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def field(reader, key: str, default=None):
    """A metadata value of an open GGUFReader (default when absent)."""
    entry = reader.fields.get(key)
    return default if entry is None else entry.contents()


def architecture(reader) -> str:
    arch = field(reader, "general.architecture")
    if arch not in DIRECT_ARCHS | ROPE_PERMUTED_ARCHS:
        raise DistillSpecError(f"rewriting {arch!r} GGUF models is not supported; supported: "
                               f"{', '.join(sorted(DIRECT_ARCHS | ROPE_PERMUTED_ARCHS))}")
    return arch


def hf_to_gguf_names(arch: str, block_count: int, hf_names: Sequence[str]) -> dict[str, str]:
    """HF parameter or module name ('model.layers.0.self_attn.q_proj[.weight]') -> GGUF
    tensor name, by gguf-py's own name map for the architecture."""
    import gguf

    arch_ids = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
    name_map = gguf.get_tensor_name_map(arch_ids[arch], block_count)
    names = {}
    for hf_name in hf_names:
        if hf_name.endswith((".weight", ".bias")):
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        else:
            gguf_name = name_map.get_name(hf_name)
            gguf_name = None if gguf_name is None else gguf_name + ".weight"
        if gguf_name is None:
            raise DistillSpecError(f"{hf_name} has no GGUF tensor in a {arch} model")
        names[hf_name] = gguf_name
    return names


def rope_heads(reader, gguf_name: str) -> int | None:
    """For a llama-ordered q or k projection (weight or bias), its head count (None: rows
    stored as HF stores them)."""
    arch = field(reader, "general.architecture")
    if arch not in ROPE_PERMUTED_ARCHS:
        return None
    if ".attn_q." in gguf_name:
        return int(field(reader, f"{arch}.attention.head_count"))
    if ".attn_k." in gguf_name:
        return int(field(reader, f"{arch}.attention.head_count_kv", field(reader, f"{arch}.attention.head_count")))
    return None


#: what a `copy_metadata` change returns to leave a key out
DROP_KEY = object()


def copy_metadata(reader, writer, *, name: str | None = None, block_count: int | None = None,
                  file_type: int | None = None, change=None) -> None:
    """Every key of `reader` into `writer`, optionally with a new model name, block count and
    file type (the keys gguf-py writes itself are skipped). change(key, value): the value to
    write instead, or DROP_KEY to leave the key out."""
    import gguf

    arch = field(reader, "general.architecture")
    for entry in reader.fields.values():
        if entry.name == gguf.Keys.General.ARCHITECTURE or entry.name.startswith("GGUF."):
            continue
        value_type = entry.types[0]
        sub_type = entry.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = entry.contents()
        if entry.name == gguf.Keys.General.NAME and name is not None:
            value = name
        elif entry.name == f"{arch}.block_count" and block_count is not None:
            value = block_count
        elif entry.name == gguf.Keys.General.FILE_TYPE and file_type is not None:
            value = file_type
        if change is not None:
            value = change(entry.name, value)
        if value is not DROP_KEY:
            writer.add_key_value(entry.name, value, value_type, sub_type=sub_type)


def write_layer_cut(base: Path, layers: Sequence[int], out: Path, name: str | None = None) -> Path:
    """`base` keeping only the blocks `layers` (renumbered from 0, in order), every tensor
    copied byte for byte in its published type: the cut costs per block what the original
    does, and nothing is rounded twice."""
    import gguf

    reader = read_gguf(base)
    arch = architecture(reader)
    layers = checked_layers(layers, int(field(reader, f"{arch}.block_count")))
    new_index = {old: new for new, old in enumerate(layers)}
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        copy_metadata(reader, writer, name=name or f"{base.stem} blocks {_ranges(layers)}", block_count=len(layers))
        for tensor in reader.tensors:
            new_name = renumbered(tensor.name, new_index)
            if new_name is not None:
                writer.add_tensor(new_name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
        write_out(writer)
    return out


def write_f16_from_tensors(template: Path, tensors: Mapping[str, np.ndarray], out: Path, name: str, *,
                           hf_row_order: bool = True) -> Path:
    """A GGUF in `template`'s frame (its metadata, its tensor order) whose tensors are
    `tensors` (GGUF name -> float array in HF row order, or in the GGUF's own when
    `hf_row_order` is False), written as F16 matrices and F32 vectors. The block count is
    the one the tensors hold; every template tensor of those blocks and outside them must
    be given, and nothing else."""
    import gguf

    reader = read_gguf(template)
    arch = architecture(reader)
    blocks = {b for b in map(block_of, tensors) if b is not None}
    if blocks != set(range(len(blocks))):
        raise DistillSpecError(f"the tensors hold blocks {sorted(blocks)}; expected 0..{len(blocks) - 1}")
    template_blocks = int(field(reader, f"{arch}.block_count"))
    if len(blocks) > template_blocks:
        raise DistillSpecError(f"the tensors hold {len(blocks)} blocks; the template {template.name} has only "
                               f"{template_blocks}")
    names = set(_frame_order(reader, len(blocks)))
    missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
    if missing or extra:
        raise DistillSpecError(f"tensors do not fit the template {template.name}: missing {missing[:3]}, "
                               f"unexpected {extra[:3]}")
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        copy_metadata(reader, writer, name=name, block_count=len(blocks),
                      file_type=int(gguf.LlamaFileType.MOSTLY_F16))
        for gguf_name in _frame_order(reader, len(blocks)):
            weight = np.asarray(tensors[gguf_name], dtype=np.float32)
            expected = shapes.get(gguf_name) or shapes.get(_BLOCK.sub("blk.0.", gguf_name))
            if weight.shape != expected:
                raise DistillSpecError(f"{gguf_name} has shape {weight.shape}; the template's is {expected}")
            heads = rope_heads(reader, gguf_name) if hf_row_order else None
            if heads is not None:
                weight = rope_row_order(weight, heads)
            writer.add_tensor(gguf_name, weight.astype(np.float16 if weight.ndim > 1 else np.float32))
        write_out(writer)
    return out


def _frame_order(reader, block_count: int) -> list[str]:
    """Tensor names in the template's order, block 0's pattern repeated for every block."""
    outside = [t.name for t in reader.tensors if block_of(t.name) is None]
    per_block = [t.name.split(".", 2)[2] for t in reader.tensors if block_of(t.name) == 0]
    return outside + [f"blk.{b}.{suffix}" for b in range(block_count) for suffix in per_block]


def _ranges(layers: Sequence[int]) -> str:
    return ",".join(map(str, layers))


def write_out(writer) -> None:
    """Header, metadata and tensors of a GGUFWriter, in the order a GGUF file holds them."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(source: Path, out: Path, file_type: int, *, requantize: bool = False,
                   head_type: int | None = None) -> Path:
    """llama.cpp's quantizer: `source` -> `out` as LLAMA_FTYPE `file_type`, written aside and
    renamed into place. requantize: allow an already quantized source (rounds twice).
    head_type: the GGML type of the output head (None: llama.cpp's choice for the file type,
    which keeps a 4-bit file's head at 6 bits; in a few-block draft that head is most of a
    step's cost)."""
    from ..engine.llamacpp import _llama

    llama = _llama()
    params = llama.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = requantize
    if head_type is not None:
        params.output_tensor_type = head_type
    with atomic_file(out) as tmp:
        code = llama.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if code != 0:
            raise DistillSpecError(f"llama.cpp could not quantize {source} (code {code})")
    return out
