"""Low-rank adapters (peft LoRA) on a draft: train few parameters, ship a small folder.

Full fine-tuning of a 0.5B draft needs gigabytes of AdamW state and yields a model as large
as the draft; a LoRA adapter of rank 16 on every linear layer trains a few million
parameters and ships in tens of megabytes. An adapter folder is peft's own format plus `distillspec_adapter.json`, which
names the base model *spec* (peft records a cache path, which does not travel between
machines). `models.load.load_model` accepts such a folder anywhere a model spec goes and
returns the merged model, so bench, generate and the @int8/@head draft modifiers work on
it unchanged; `export-draft` writes the merged model as a plain HF folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..atomic import atomic_folder
from ..errors import DistillSpecError

ADAPTER_INFO = "distillspec_adapter.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
#: every linear layer of the decoder blocks (peft excludes the LM head from "all-linear")
LORA_TARGET_MODULES = "all-linear"


def check_lora_rank(rank) -> None:
    if not isinstance(rank, int) or rank < 0:
        raise DistillSpecError(f"lora_rank must be an integer >= 0 (0: train all weights), got {rank!r}")


def add_lora(model: PreTrainedModel, rank: int, alpha: float | None = None):
    """Wrap `model` in a peft LoRA model of `rank` on all its decoder linear layers.

    Only the adapter weights are trainable afterwards; the base weights are frozen.
    alpha defaults to 2 * rank (a scale of 2, the common choice for distillation).
    """
    from peft import LoraConfig, get_peft_model

    check_lora_rank(rank)
    if rank == 0:
        raise DistillSpecError("lora_rank 0 means full fine-tuning; there is no adapter to add")
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, bias="none",
                        target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_adapter(peft_model, folder: Path, base_spec: str, dtype: torch.dtype = torch.float32,
                 extra: dict | None = None) -> Path:
    """peft's adapter folder (weights cast to `dtype`) plus the base spec, written atomically."""
    from peft import get_peft_model_state_dict

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        config = copy.copy(peft_model.peft_config["default"])
        config.base_model_name_or_path = base_spec  # not this machine's cache path
        config.save_pretrained(str(tmp))
        state = get_peft_model_state_dict(peft_model)
        save_file({k: v.detach().to(dtype).cpu().contiguous() for k, v in state.items()}, str(tmp / PEFT_WEIGHTS))
        info = {"format": 1, "base": base_spec, "dtype": str(dtype).replace("torch.", ""), **(extra or {})}
        (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=1))
    return folder


def copy_adapter(source, out: Path, dtype: torch.dtype) -> Path:
    """The adapter folder `source` written to `out` with its weights cast to `dtype` (atomic)."""
    import shutil

    source, out = Path(source), Path(out)
    with atomic_folder(out) as tmp:
        for item in source.iterdir():
            if item.name not in (PEFT_WEIGHTS, ADAPTER_INFO):
                shutil.copy2(item, tmp / item.name)
        weights = load_file(str(source / PEFT_WEIGHTS))
        save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(tmp / PEFT_WEIGHTS))
        info = {**read_adapter_info(source), "dtype": str(dtype).replace("torch.", "")}
        (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=1))
    return out


def is_adapter_folder(path) -> bool:
    path = Path(str(path))
    return (path / ADAPTER_INFO).is_file() and (path / PEFT_CONFIG).is_file()


def read_adapter_info(folder) -> dict:
    return json.loads((Path(folder) / ADAPTER_INFO).read_text())


def adapter_base_spec(folder) -> str:
    """The model spec the adapter was trained on (resolved relative to the folder if a path)."""
    base = read_adapter_info(folder).get("base")
    if not base:
        raise DistillSpecError(f"{folder}/{ADAPTER_INFO} names no base model")
    relative = Path(folder) / base
    return str(relative) if not Path(base).is_absolute() and relative.exists() else base


def merge_adapter(base: PreTrainedModel, folder) -> PreTrainedModel:
    """`base` with the adapter in `folder` merged into its weights: a plain HF model again.

    Every adapter tensor must land on a layer of `base`: peft alone only warns about
    tensors it cannot place, which would silently load a different draft.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    folder = Path(folder)
    try:
        config = LoraConfig.from_pretrained(str(folder))
        config.base_model_name_or_path = base.name_or_path  # the spec was resolved to this model
        wrapped = get_peft_model(base, config)
        result = set_peft_model_state_dict(wrapped, load_file(str(folder / PEFT_WEIGHTS)))
    except Exception as exc:  # shape mismatch with the base, corrupt weights, ...
        raise DistillSpecError(f"could not apply the adapter in {folder} to its base model: {exc}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise DistillSpecError(
            f"could not apply the adapter in {folder} to its base model: "
            f"{len(result.unexpected_keys)} adapter tensors fit no layer (e.g. {result.unexpected_keys[:2]}), "
            f"{len(missing)} adapter layers got no tensor (e.g. {missing[:2]})"
        )
    return wrapped.merge_and_unload()


def underlying_model(model) -> PreTrainedModel:
    """The HF model inside a LoRA wrapper, adapters still live in its layers (for the engine)."""
    return model.get_base_model() if is_peft_model(model) else model


def sampling_snapshot(model, quant: str | None) -> PreTrainedModel:
    """A frozen copy of a (possibly LoRA) draft to sample on-policy completions from.

    quant 'int8': merged and int8 weight-only, the form the draft is deployed in. Whether
    it samples faster than float32 depends on the machine: on an AVX2-only EPYC batched
    sampling was several times slower (benchmarks/distill_step.py measures it), so the
    default stays the model itself (None / 'none').
    """
    from .quant import apply_quant

    if quant in (None, "none"):
        return model
    snapshot = merged_model(copy.deepcopy(model))
    for param in snapshot.parameters():
        param.requires_grad_(False)
    return apply_quant(snapshot, quant).eval()


def merged_model(model) -> PreTrainedModel:
    """A plain model for a possibly-LoRA-wrapped one (merges in place; call when training is over)."""
    return model.merge_and_unload() if is_peft_model(model) else model
