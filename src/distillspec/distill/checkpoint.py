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
