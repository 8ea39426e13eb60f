"""Training checkpoints, written atomically (see `atomic.atomic_folder`).

A crash at any moment leaves either the previous checkpoint or the new one, never a mix;
a crash between the final two renames is repaired when the checkpoint is looked up.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_folder, recover_folder

CHECKPOINT = "checkpoint"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict) -> Path:
    with atomic_folder(out / CHECKPOINT) as tmp:
        save_file(trainable_state(model), str(tmp / "draft_trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    return out / CHECKPOINT


def find_checkpoint(out: Path) -> Path | None:
    recover_folder(out / CHECKPOINT)
    final = out / CHECKPOINT
    return final if (final / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    weights = load_file(str(path / "draft_trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"checkpoint has unexpected tensors: {missing.unexpected_keys[:5]}")
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return json.loads((path / "state.json").read_text())


def adapter_from_checkpoint(run: Path, config, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The LoRA adapter of a run's last checkpoint, as an adapter folder (a run still under way).

    A long run continues across sessions; this lets its progress be measured (bench, eval)
    at any checkpoint without waiting for it to finish.
    """
    from ..errors import DistillSpecError
    from ..models.adapters import add_lora, save_adapter
    from ..models.load import load_model

    checkpoint = find_checkpoint(Path(run))
    if checkpoint is None:
        raise DistillSpecError(f"{run} has no checkpoint yet")
    if not config.lora_rank:
        raise DistillSpecError(f"{run} trains every draft weight (lora_rank 0); its checkpoint holds no adapter")
    base, _ = load_model(config.draft, dtype="float32")
    wrapped = add_lora(base, config.lora_rank, config.lora_alpha or None)
    result = wrapped.load_state_dict(load_file(str(checkpoint / "draft_trainable.safetensors")), strict=False)
    if result.unexpected_keys:
        raise DistillSpecError(f"checkpoint of {run} does not fit its recipe: {result.unexpected_keys[:3]}")
    state = json.loads((checkpoint / "state.json").read_text())
    return save_adapter(wrapped, out, base_spec=config.draft, dtype=dtype,
                        extra={"recipe": config.to_dict(), "checkpoint_step": state["step"]})
