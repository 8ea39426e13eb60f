"""Build a draft model out of a target's own layers.

No smaller sibling of the default target exists offline, so the draft starts as a subset
of the target's decoder layers. It keeps the target's architecture and tokenizer, and by
default shares (the very same tensors) the target's token embedding and LM head, so
loading both costs the memory of the extra layers only.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import DistillSpecError


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'0,14,29' or '0-3,29' -> [0, 14, 29]; negative indices count from the end."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise DistillSpecError(
            f"bad layer list {text!r}: expected comma-separated indices or ranges like 0,14,29 or 0-3,29"
        ) from None
    return validate_layers([i + num_layers if i < 0 else i for i in layers], num_layers)


def validate_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    layers = list(layers)
    if not layers:
        raise DistillSpecError("a draft needs at least one layer")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise DistillSpecError(
            f"layer indices {bad} are out of range: the target has layers 0..{num_layers - 1}"
        )
    if len(set(layers)) != len(layers) or layers != sorted(layers):
        raise DistillSpecError(f"layers must be increasing and distinct, got {layers}")
    return layers


def _subset_config(config, layers: list[int]):
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(layers)
    # Some architectures (e.g. Gemma 3) describe each layer's attention type in a list.
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def take_module_kinds(dest: nn.Module, source: nn.Module) -> None:
    """Where `source` holds a module of another kind than `dest` at the same place (an int8
    linear of a quantized target, where the fresh layer has nn.Linear), put a copy of it in
    `dest`, so that the state dicts match. Why: `--target-quant int8` with a layer-subset
    draft failed with a state-dict error; the draft's layers are now int8 like the target's."""
    for name, module in list(source.named_modules()):
        if not name:
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = dest.get_submodule(parent_name) if parent_name else dest
        mine = getattr(parent, attribute, None)
        if mine is not None and type(mine) is not type(module):
            setattr(parent, attribute, copy.deepcopy(module))


def layer_subset_draft(
    target: PreTrainedModel, layers: Sequence[int], share_embeddings: bool = True, copy_layers: bool = True
) -> PreTrainedModel:
    """A draft with the target's layers `layers` (in order), its final norm and head.

    share_embeddings: the draft uses the target's embedding and LM head modules
    themselves (frozen during distillation); otherwise it gets copies. copy_layers False:
    the layers and norm keep their fresh float initialisation, for a caller that fills
    them itself (a delta draft), whatever form the target's layers take (int8 or not).
    """
    layers = validate_layers(layers, target.config.num_hidden_layers)
    config = _subset_config(target.config, layers)
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    source, dest = target.get_decoder(), draft.get_decoder()
    for new_index, old_index in enumerate(layers if copy_layers else []):
        take_module_kinds(dest.layers[new_index], source.layers[old_index])
        dest.layers[new_index].load_state_dict(source.layers[old_index].state_dict())
    if copy_layers:
        dest.norm.load_state_dict(source.norm.state_dict())
    if share_embeddings:
        draft.set_input_embeddings(target.get_input_embeddings())
        draft.set_output_embeddings(target.get_output_embeddings())
    else:
        draft.get_input_embeddings().load_state_dict(target.get_input_embeddings().state_dict())
        draft.get_output_embeddings().load_state_dict(target.get_output_embeddings().state_dict())
    return draft.to(target.device).eval()


def share_identical_tensors(draft: PreTrainedModel, target: PreTrainedModel) -> list[str]:
    """Point the draft's embedding/head at the target's when their values are identical.

    A draft saved to disk carries its own copy of the shared tensors so any engine can
    load it alone; loaded beside its target, the copy is dropped and memory is held once.
    Returns the names of the shared modules.
    """
    shared = []
    pairs = [("input embeddings", draft.get_input_embeddings(), target.get_input_embeddings(),
              draft.set_input_embeddings),
             ("output embeddings", draft.get_output_embeddings(), target.get_output_embeddings(),
              draft.set_output_embeddings)]
    for name, mine, theirs, setter in pairs:
        if mine is None or theirs is None or mine is theirs:
            continue
        if not (isinstance(getattr(mine, "weight", None), torch.Tensor)
                and isinstance(getattr(theirs, "weight", None), torch.Tensor)):
            continue  # a quantized module (an int8 target's head) holds no comparable weight
        if mine.weight.shape == theirs.weight.shape and mine.weight.dtype == theirs.weight.dtype \
                and torch.equal(mine.weight, theirs.weight):
            setter(theirs)
            shared.append(name)
    return shared
