"""A distilled layer cut shipped as low-rank changes to the published GGUF it was cut from.

Why: the cheap drafts for llama.cpp are cuts of the 0.5B (a few of its blocks) with every
block weight trained, 89M parameters for six blocks, far more than a package should carry.
But their weights moved little from the published blocks they started as, and by changes
close to low-rank. A *GGUF delta* folder stores, per trained matrix, the change's leading
singular directions (`low_rank.low_rank_factors`, int8 with a scale per direction, or
float16) and trained vectors (norms, biases) whole, all in the GGUF's tensor names and
row order, plus which of the base's blocks the cut keeps and the file types to quantize to. The draft's GGUF is rebuilt on
first use from the published GGUF the user already has (`cached_gguf_delta`), quantized
by llama.cpp, and kept in the cache with its sha256 recorded (`cache_integrity`): a file
that no longer matches is rebuilt.

Files: `distillspec_gguf_delta.json` (base, its digest, layers, rank, types, provenance)
and `gguf_delta.safetensors` (`NAME.u` [O, r], `NAME.v` [r, I], with `NAME.u_scale` and
`NAME.v_scale` [r] when they are int8; or `NAME.value`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic import atomic_folder
from ..choices import FACTOR_TYPES
from ..errors import DistillSpecError
from .draft_info import DRAFT_GGUF, draft_lineage
from .gguf_read import one_parse_per_file, read_gguf
from .low_rank import float_factors, int8_factors, kept_fraction, low_rank_factors

DELTA_INFO = "distillspec_gguf_delta.json"
DELTA_WEIGHTS = "gguf_delta.safetensors"
#: folder formats this version reads: 1 float16 factors only, 2 int8 or float16
READ_FORMATS = (1, 2)


def is_gguf_delta_folder(path) -> bool:
    return Path(str(path)).is_dir() and (Path(str(path)) / DELTA_INFO).is_file()


def read_gguf_delta_info(folder) -> dict:
    info = json.loads((Path(folder) / DELTA_INFO).read_text())
    if info.get("format") not in READ_FORMATS:
        raise DistillSpecError(f"{folder} is a GGUF delta of format {info.get('format')!r}; this version reads "
                               f"formats {', '.join(map(str, READ_FORMATS))}: upgrade distillspec")
    return info


def _base_gguf(spec: str) -> Path:
    from .load import gguf_source

    path = gguf_source(spec)
    if path is None:
        raise DistillSpecError(f"a GGUF delta is written over a GGUF model; {spec!r} names none "
                               "(give a packaged model name or a .gguf path)")
    return path


def _cut_to_source(layers: Sequence[int], count: int) -> dict[int, int]:
    """cut block index -> base block index, after checking `layers` against the base."""
    from .gguf_rewrite import checked_layers

    return dict(enumerate(checked_layers(layers, count)))


def trained_in_gguf_frame(trained: Mapping[str, torch.Tensor], reader, block_count: int) -> dict[str, np.ndarray]:
    """HF parameter name (cut numbering) -> float32 array under its GGUF name, rows in the
    GGUF's own order (llama's q/k rows reordered for its rope)."""
    from .gguf_rewrite import architecture, hf_to_gguf_names, rope_heads, rope_row_order

    names = hf_to_gguf_names(architecture(reader), block_count, list(trained))
    frame = {}
    for hf_name, value in trained.items():
        array = value.detach().float().cpu().numpy()
        heads = rope_heads(reader, names[hf_name])
        frame[names[hf_name]] = array if heads is None else rope_row_order(array, heads)
    return frame


def delta_tensors(frame: Mapping[str, np.ndarray], base_values: Mapping[str, np.ndarray],
                  rank: int, factors: str = "int8") -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """What a GGUF delta stores for trained tensors `frame` over `base_values` (same names,
    same shapes): vectors whole, matrices as rank-`rank` factors of their change, stored as
    `factors` (one of FACTOR_TYPES). Returns (tensors to store, each matrix's kept fraction
    of its change's squared norm, after storage rounding)."""
    if factors not in FACTOR_TYPES:
        raise DistillSpecError(f"factors must be one of {', '.join(FACTOR_TYPES)}; got {factors!r}")
    stored, kept = {}, {}
    for name, value in frame.items():
        base = base_values[name]
        if value.shape != base.shape:
            raise DistillSpecError(f"trained {name} has shape {value.shape}, the base's is {base.shape}: "
                                   "the draft was not cut from this GGUF")
        if value.ndim == 1:
            stored[f"{name}.value"] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            continue
        change = torch.from_numpy(np.ascontiguousarray(value - base, dtype=np.float32))
        parts = _stored_factors(name, *low_rank_factors(change, rank), factors)
        stored.update({f"{name}.{part}": tensor for part, tensor in parts.items()})
        kept[name] = kept_fraction(change, *factors_of(stored, name))
    return stored, kept


def _stored_factors(name: str, u: torch.Tensor, v: torch.Tensor, factors: str) -> dict[str, torch.Tensor]:
    if factors == "int8":
        return int8_factors(u, v)
    u16, v16 = u.half().contiguous(), v.half().contiguous()
    if not (torch.isfinite(u16).all() and torch.isfinite(v16).all()):
        raise DistillSpecError(f"the change to {name} overflows float16; it is not a fine-tuning change")
    return {"u": u16, "v": v16}


def factors_of(stored: Mapping[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 factors (u [O, r], v [r, I]) of matrix `name`'s stored change."""
    if f"{name}.u_scale" in stored:
        return float_factors({part: stored[f"{name}.{part}"] for part in ("u", "u_scale", "v", "v_scale")})
    return stored[f"{name}.u"].float(), stored[f"{name}.v"].float()


def factor_keys(stored: Mapping[str, torch.Tensor], name: str) -> set[str]:
    """The stored tensors that make up matrix `name`'s change (to find ones nothing uses)."""
    return {f"{name}.{part}" for part in ("u", "u_scale", "v", "v_scale") if f"{name}.{part}" in stored}


@one_parse_per_file()
def write_gguf_delta(trained: Mapping[str, torch.Tensor], base_spec: str, layers: Sequence[int], out, *,
                     rank: int, gguf_type: str = "q4_0", head_type: str | None = "q4_0",
                     factors: str = "int8", extra: dict | None = None) -> dict:
    """Write the folder `out` for a cut of `base_spec` keeping blocks `layers`, whose trained
    tensors are `trained` (HF names in the cut's numbering: the blocks and the final norm;
    the embedding and head stay the base's). gguf_type, head_type: what the rebuilt GGUF is
    quantized to; factors: how the changes' factors are stored (FACTOR_TYPES). Returns the
    info written (with each matrix's kept fraction summarized)."""
    import gguf
    from safetensors.torch import save_file

    from .gguf_convert import file_fingerprint
    from .gguf_export import quantizer_types
    from .gguf_rewrite import architecture, field, renumbered

    if rank < 1:
        raise DistillSpecError(f"rank must be >= 1, got {rank}")
    if factors not in FACTOR_TYPES:
        raise DistillSpecError(f"factors must be one of {', '.join(FACTOR_TYPES)}; got {factors!r}")
    base = _base_gguf(base_spec)
    quantizer_types(gguf_type, head_type, base)  # refuse unknown types before any work
    reader = read_gguf(base)
    arch = architecture(reader)
    to_source = _cut_to_source(layers, int(field(reader, f"{arch}.block_count")))
    frame = trained_in_gguf_frame(trained, reader, len(to_source))
    by_name = {t.name: t for t in reader.tensors}
    base_values = {}
    for name in frame:
        source = renumbered(name, to_source)
        if source == "output.weight" and source not in by_name:  # a head tied to the embedding in the file
            source = "token_embd.weight"
        if source not in by_name:
            raise DistillSpecError(f"the base {base.name} has no tensor {source} for trained {name}")
        tensor = by_name[source]
        base_values[name] = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    _drop_untrained_outside_blocks(frame, base_values)
    stored, kept = delta_tensors(frame, base_values, rank, factors)
    fractions = list(kept.values()) or [1.0]
    info = {"format": 2 if factors == "int8" else 1, "base": str(base_spec),
            "base_fingerprint": file_fingerprint(base), "layers": list(layers), "rank": rank, "factors": factors,
            "gguf_type": gguf_type, "head_type": head_type,
            "matrices": len(kept), "vectors": len(frame) - len(kept),
            "kept_fraction": {"min": min(fractions), "mean": sum(fractions) / len(fractions)}, **(extra or {})}
    with atomic_folder(Path(out)) as tmp:
        save_file(stored, str(tmp / DELTA_WEIGHTS))
        (tmp / DELTA_INFO).write_text(json.dumps(info, indent=1))
    return info


#: largest change, relative to the base tensor's largest entry, that still counts as untouched
#: (a bfloat16 round trip of the base changes an entry by up to 2^-8 of itself)
UNTRAINED_TOLERANCE = 1e-2


def _drop_untrained_outside_blocks(frame: dict[str, np.ndarray], base_values: Mapping[str, np.ndarray]) -> None:
    """Remove the embedding (and head) from `frame` after checking that training left them
    as the base has them: a delta ships block changes, and rebuilds the rest from the base."""
    from .gguf_rewrite import block_of

    for name in [n for n, value in frame.items() if block_of(n) is None and value.ndim > 1]:
        gap = float(np.abs(frame[name] - base_values[name]).max())
        if gap > UNTRAINED_TOLERANCE * float(np.abs(base_values[name]).max()):
            raise DistillSpecError(f"the draft's {name} differs from the base's (by up to {gap:.3g}): a GGUF delta "
                                   "ships the blocks' changes only; distil with freeze_embeddings, or export "
                                   "--format gguf")
        del frame[name]


def _checked_base(folder: Path, info: dict) -> Path:
    from .gguf_convert import file_fingerprint

    base = _base_gguf(info["base"])
    if file_fingerprint(base) != info["base_fingerprint"]:
        raise DistillSpecError(f"{folder} was written over a {info['base']!r} GGUF with sha256 "
                               f"{info['base_fingerprint']}..., but {base} has {file_fingerprint(base)}...: "
                               "a delta only rebuilds its draft over the file it was taken from")
    return base


def rebuilt_tensors(reader, to_source: Mapping[int, int], stored: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The cut's tensors (GGUF names, GGUF row order, float32): the base's kept blocks and
    outside tensors, each trained vector replaced and each trained matrix plus u @ v."""
    import gguf

    from .gguf_rewrite import block_of, renumbered

    to_cut = {source: cut for cut, source in to_source.items()}
    tensors, used = {}, set()
    for tensor in reader.tensors:
        name = renumbered(tensor.name, to_cut)
        if name is None:
            continue
        if f"{name}.value" in stored:
            tensors[name] = stored[f"{name}.value"].float().numpy()
            used.add(f"{name}.value")
            continue
        value = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if f"{name}.u" in stored:
            u, v = factors_of(stored, name)
            value = value + (u @ v).numpy()
            used.update(factor_keys(stored, name))
        tensors[name] = value
    unused = sorted(set(stored) - used)
    if unused:
        block = block_of(unused[0])
        raise DistillSpecError(f"the delta changes {unused[0]}, which the cut of the base does not hold"
                               + ("" if block is None else f" (block {block})"))
    return tensors


@one_parse_per_file()
def build_gguf_delta(folder, out) -> Path:
    """Rebuild the draft of GGUF delta `folder` as the GGUF file `out`: base tensors plus the
    stored changes, written as F16 in the base's frame, then quantized by llama.cpp to the
    folder's types."""
    from safetensors.torch import load_file

    from .gguf_export import quantizer_types, written_and_quantized
    from .gguf_rewrite import architecture, field, write_f16_from_tensors

    folder, out = Path(folder), Path(out)
    info = read_gguf_delta_info(folder)
    base = _checked_base(folder, info)
    reader = read_gguf(base)
    to_source = _cut_to_source(info["layers"], int(field(reader, f"{architecture(reader)}.block_count")))
    tensors = rebuilt_tensors(reader, to_source, load_file(str(folder / DELTA_WEIGHTS)))
    def write_f16(f16: Path) -> None:
        write_f16_from_tensors(base, tensors, f16, f"{base.stem} cut, {folder.name}", hf_row_order=False)

    return written_and_quantized(out, write_f16, *quantizer_types(info["gguf_type"], info["head_type"], base))


def cached_gguf_delta(folder) -> Path:
    """The draft of GGUF delta `folder` as a GGUF in the cache, built on first use (tens of
    seconds for a 0.5B cut) and named by the delta's and the base's digests. The cached
    file's sha256 is recorded; one that fails the record is built again (`built_once`)."""
    from .cache_integrity import built_once
    from .gguf_convert import cache_root, file_fingerprint

    folder = Path(folder)
    info = read_gguf_delta_info(folder)
    base = _checked_base(folder, info)
    digest = f"{file_fingerprint(folder / DELTA_WEIGHTS)[:8]}-{file_fingerprint(base)[:8]}"

    def build(tmp: Path) -> None:
        build_gguf_delta(folder, tmp / DRAFT_GGUF)
        (tmp / DELTA_INFO).write_text(json.dumps(info, indent=1))

    return built_once(cache_root() / "gguf-export" / f"{folder.resolve().name}-{digest}", DRAFT_GGUF, build,
                      f"the GGUF of draft {folder.name} over {base.name}")


def cut_origin(folder) -> tuple[str, list[int]]:
    """(the model spec a draft folder was cut from, the blocks it kept), from its info (as
    `make-draft` records them) or, for a distilled draft, from the draft it started as
    (`draft_lineage`). Refuses a draft whose lineage records no cut."""
    for _, info in draft_lineage(folder):
        if info.get("source") and info.get("layers"):
            return str(info["source"]), [int(i) for i in info["layers"]]
    raise DistillSpecError(f"{folder} is not a layer cut that records its source model and blocks (make-draft "
                           "--layers writes them); a GGUF delta is a cut's change to its source GGUF")
