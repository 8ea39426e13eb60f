"""Small shippable drafts: only the tensors a draft does not share with its target.

A layer-subset draft shares its target's embedding and LM head, the bulk of a small
model's parameters. A *delta* folder stores just the rest (its decoder layers and final
norm), optionally int8-quantized per output row, plus which target layers it started
from; loading rebuilds the draft on top of the target in memory. The default draft ships
in this format inside the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..errors import DistillSpecError
from .quant import quantize_rows
from .subsets import layer_subset_draft

DELTA_INFO = "distillspec_delta.json"
DELTA_WEIGHTS = "delta.safetensors"


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q: [O, I] int8, scale: [O, 1] (as stored) -> [O, I] float32."""
    return q.float() * scale


def unshared_state(draft: PreTrainedModel, target: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Draft tensors that are not (identical to) the target's embedding or head."""
    shared = {id(p) for p in target.parameters()}
    embedding = target.get_input_embeddings().weight
    head = target.get_output_embeddings().weight
    out = {}
    for name, param in draft.named_parameters():
        if id(param) in shared:
            continue
        if param.shape == embedding.shape and (torch.equal(param, embedding) or torch.equal(param, head)):
            continue
        out[name] = param.detach().float().cpu().contiguous()
    return out


def save_delta(draft: PreTrainedModel, target: PreTrainedModel, layers: list[int], folder: Path,
               quantize: bool = True, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in unshared_state(draft, target).items():
        if quantize and tensor.dim() == 2:
            q, scale = quantize_rows(tensor)  # the int8 drafts' quantizer; stored scales are [O, 1]
            tensors[name + ".q"], tensors[name + ".scale"] = q, scale[:, None]
        else:
            tensors[name] = tensor
    save_file(tensors, str(folder / DELTA_WEIGHTS))
    info = {"format": 1, "layers": list(layers), "quantized": quantize,
            "target": {"model_type": target.config.model_type,
                       "num_hidden_layers": target.config.num_hidden_layers,
                       "hidden_size": target.config.hidden_size,
                       "vocab_size": target.config.vocab_size},
            **(extra or {})}
    (folder / DELTA_INFO).write_text(json.dumps(info, indent=1))
    return folder


def is_delta_folder(folder) -> bool:
    return (Path(folder) / DELTA_INFO).is_file()


def read_delta_info(folder) -> dict:
    return json.loads((Path(folder) / DELTA_INFO).read_text())


def target_mismatch(info: dict, target: PreTrainedModel) -> str | None:
    """Why a delta cannot be rebuilt on `target`, or None when it can."""
    expected = info["target"]
    actual = {k: getattr(target.config, k, None) for k in expected}
    return None if actual == expected else f"it was made for a target with {expected}, but this target has {actual}"


def load_delta(folder, target: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a delta draft on `target` (sharing its embedding and head)."""
    folder = Path(folder)
    info = read_delta_info(folder)
    mismatch = target_mismatch(info, target)
    if mismatch:
        raise DistillSpecError(f"cannot use the draft in {folder}: {mismatch}")
    # every layer tensor comes from the delta: fresh float layers, even on an int8 target
    draft = layer_subset_draft(target, info["layers"], copy_layers=False)
    stored = load_file(str(folder / DELTA_WEIGHTS))
    state = {}
    for name in {k.removesuffix(".q").removesuffix(".scale") for k in stored}:
        state[name] = dequantize_rows(stored[name + ".q"], stored[name + ".scale"]) if name + ".q" in stored \
            else stored[name]
    params = dict(draft.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise DistillSpecError(f"the draft in {folder} has tensors this architecture lacks: {unknown[:3]}")
    shared = {id(p) for p in target.parameters()}
    missing = sorted(name for name, p in params.items() if id(p) not in shared and name not in state)
    if missing:  # the layers were left as initialised (copy_layers=False): every one must be stored
        raise DistillSpecError(f"the draft in {folder} lacks tensors its layers need: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    return draft
