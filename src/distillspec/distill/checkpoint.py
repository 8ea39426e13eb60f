"""Atomic training checkpoints: a folder written aside, then swapped into place.

A crash at any moment leaves either the previous checkpoint or the new one, never a mix:
the new folder is complete before `checkpoint` is renamed to `.checkpoint.old` and the new
one renamed to `checkpoint`; a crash between the two renames is repaired on load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    final, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "draft_trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path) -> Path | None:
    final, old = out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    if (final / "state.json").is_file():
        return final
    if (old / "state.json").is_file():  # crashed between the two renames
        old.rename(final)
        return final
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    weights = load_file(str(path / "draft_trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"checkpoint has unexpected tensors: {missing.unexpected_keys[:5]}")
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return json.loads((path / "state.json").read_text())
