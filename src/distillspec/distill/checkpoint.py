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
from ..errors import DistillSpecError

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


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's state.json: its step and the recipe it was saved with."""
    return json.loads((checkpoint / "state.json").read_text())


def require_checkpoint(run: Path) -> Path:
    """A run's last checkpoint, or a clear error when it has none yet."""
    checkpoint = find_checkpoint(Path(run))
    if checkpoint is None:
        raise DistillSpecError(f"{run} has no checkpoint yet")
    return checkpoint


def checkpoint_step(out: Path) -> int | None:
    """The step of a run's last checkpoint (None: no checkpoint yet)."""
    checkpoint = find_checkpoint(Path(out))
    return None if checkpoint is None else read_state(checkpoint)["step"]


def load_trainable(path: Path, model) -> None:
    """Load a checkpoint's trainable tensors into `model` (the frozen rest comes from its base).

    strict=False because the checkpoint holds only what trains; a tensor the model lacks
    means the checkpoint belongs to another recipe, which must not load silently.
    """
    result = model.load_state_dict(load_file(str(path / "draft_trainable.safetensors")), strict=False)
    if result.unexpected_keys:
        raise DistillSpecError(f"checkpoint {path} does not fit this recipe's draft: it holds "
                               f"{len(result.unexpected_keys)} tensors the draft lacks, e.g. "
                               f"{result.unexpected_keys[:3]}")


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    load_trainable(path, model)
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return read_state(path)


def _refuse_layer_subset(run: Path, config) -> None:
    if config.draft.startswith("layers:"):
        raise DistillSpecError(f"{run} trains a layer subset of its target; its draft is exported once the run "
                               "finishes (draft/), not from a checkpoint mid-schedule")


def _checkpoint_model(run: Path, config):
    """(draft with the checkpoint's trainable weights loaded, tokenizer, step): the LoRA
    wrapper for adapter runs, the plain model for full fine-tuning."""
    from ..models.adapters import add_lora
    from ..models.load import load_model

    checkpoint = require_checkpoint(run)
    _refuse_layer_subset(run, config)
    model, tokenizer = load_model(config.draft, dtype="float32")
    if config.lora_rank:
        model = add_lora(model, config.lora_rank, config.lora_alpha or None)
    load_trainable(checkpoint, model)
    return model, tokenizer, read_state(checkpoint)["step"]


def adapter_from_checkpoint(run: Path, config, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The LoRA adapter of a run's last checkpoint, as an adapter folder (a run still under way).

    A long run continues across sessions; this lets its progress be measured (bench, eval)
    at any checkpoint without waiting for it to finish.
    """
    from ..models.adapters import save_adapter

    if not config.lora_rank:
        require_checkpoint(run)
        raise DistillSpecError(f"{run} trains every draft weight (lora_rank 0); its checkpoint holds no adapter")
    wrapped, _, step = _checkpoint_model(run, config)
    return save_adapter(wrapped, out, base_spec=config.draft, dtype=dtype,
                        extra={"recipe": config.to_dict(), "checkpoint_step": step})


def full_draft_from_checkpoint(run: Path, config, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A standard HF folder (LoRA merged in) of a run's last checkpoint: what other engines
    load, for a run stopped mid-schedule (`--stop-at`) or still under way."""
    from ..models.adapters import merged_model
    from ..models.drafts import save_draft

    model, tokenizer, _ = _checkpoint_model(run, config)
    return save_draft(merged_model(model).to(dtype), tokenizer, Path(out), config)


def draft_from_checkpoint(run: Path, config, out: Path) -> Path:
    """The draft of a run's last checkpoint as a model spec folder: the adapter (LoRA runs,
    small) or a full HF folder (full fine-tuning of a model-spec draft).

    Runs compared at equal budget stop mid-schedule (`--stop-at`); their drafts are measured
    from the checkpoint without finishing the run.
    """
    if config.lora_rank:
        return adapter_from_checkpoint(run, config, out)
    return full_draft_from_checkpoint(run, config, out)


def load_branch_point(run: Path, model, optimizer) -> None:
    """Start a new run from another run's checkpoint: its trainable weights and Adam moments.

    Why: a second stage (on-policy data after a warm-up on target text, say) must start
    where the first stopped, without copying or rewriting the first run's folder, so one
    warm-up can feed several arms at equal budget. `run_folder.check_branch_point` has
    checked, before any load, that the checkpoint is at `branch_step` and fits this draft.
    """
    checkpoint = require_checkpoint(Path(run))
    load_trainable(checkpoint, model)
    optimizer.load_state_dict(torch.load(checkpoint / "optim.pt", weights_only=False)["optimizer"])
