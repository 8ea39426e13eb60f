"""A run folder's safety: what may start, resume or overwrite a distillation run there.

Why: a run's folder is hours of CPU time. Before these checks, a failed start rewrote its
`config.json` (a typo in --prompts with --resume, and the next correct --resume failed),
a start without --resume over a finished run cut its log and checkpoint back to step 1,
and --resume with another lr or divergence continued silently under a recipe the
checkpoint was not trained with. Every check here runs before anything is loaded or
written; files are written only once every input has been read (`DistillRun`), atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import DistillSpecError
from .checkpoint import CHECKPOINT, find_checkpoint, read_state
from .config import DistillConfig

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
#: what a run writes into its folder (other files there are left alone, even by --overwrite)
RUN_ENTRIES = (CONFIG_FILE, LOG_FILE, CHECKPOINT, "draft", "adapter", "curves.png")
#: keys a resumed run may change: where it is (the same folder, written another way)
FREE_ON_RESUME = ("out",)
#: recipe keys that decide which tensors train: a branch must keep its source's
TRAINABLE_KEYS = ("target", "draft", "lora_rank", "lora_alpha", "freeze_embeddings")


def holds_run(out: Path) -> bool:
    """Whether `out` holds (part of) a distillation run."""
    return any((Path(out) / name).exists() for name in RUN_ENTRIES)


def saved_recipe(out: Path) -> dict | None:
    """The recipe the run's weights were trained with: its checkpoint's, else its config.json.
    Keys added to DistillConfig since the run was saved take their defaults."""
    checkpoint = find_checkpoint(Path(out))
    recipe = None if checkpoint is None else read_state(checkpoint).get("config")
    if recipe is None:
        try:
            recipe = json.loads((Path(out) / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return None
    return {**DistillConfig().to_dict(), **recipe}


def recipe_changes(saved: dict, new: dict) -> list[str]:
    """'key: old -> new' for each key that differs (keys in FREE_ON_RESUME aside)."""
    changes = []
    for key in sorted(set(saved) | set(new)):
        if key in FREE_ON_RESUME:
            continue
        old, now = saved.get(key, "(absent)"), new.get(key, "(absent)")
        if old != now:
            changes.append(f"{key}: {old!r} -> {now!r}")
    return changes


def describe_run(out: Path) -> str:
    checkpoint = find_checkpoint(Path(out))
    if checkpoint is None:
        return f"{out} holds a run with no checkpoint yet"
    state = read_state(checkpoint)
    steps = (state.get("config") or {}).get("steps")
    return f"{out} holds a run at step {state.get('step')}" + (f" of {steps}" if steps else "")


def check_run_folder(config: DistillConfig, resume: bool, overwrite: bool) -> None:
    """Refuse, before any load, a start that would lose or misuse a run in `config.out`."""
    out = Path(config.out)
    if resume and overwrite:
        raise DistillSpecError("--resume continues the run in --out and --overwrite deletes it; give one of them")
    if resume:
        if find_checkpoint(out) is None:
            hint = " (it holds a run that never checkpointed: start it again with --overwrite)" if holds_run(out) else ""
            raise DistillSpecError(f"--resume: no checkpoint in {out}{hint}")
        saved = saved_recipe(out)
        changes = [] if saved is None else recipe_changes(saved, config.to_dict())
        if changes:
            raise DistillSpecError(
                f"--resume with a changed recipe ({'; '.join(changes)}): the checkpoint was trained with the "
                f"saved recipe ({out / CONFIG_FILE}), and a resumed run must continue it exactly. Resume without "
                "these changes, or start a new run in another --out (or over this one with --overwrite)")
        return
    if holds_run(out) and not overwrite:
        raise DistillSpecError(f"{describe_run(out)}; continue it with --resume, or pass --overwrite to delete it "
                               "and start over")
    if config.branch_from:
        check_branch_point(config)


def check_branch_point(config: DistillConfig) -> None:
    """`branch_from`'s checkpoint must be at `branch_step` (a run that kept training has moved
    it on) and must have trained the tensors this recipe trains."""
    run = Path(config.branch_from)
    checkpoint = find_checkpoint(run)
    if checkpoint is None:
        raise DistillSpecError(f"branch_from {run}: no checkpoint there")
    step = read_state(checkpoint).get("step")
    if step != config.branch_step:
        raise DistillSpecError(f"branch_from {run}: its checkpoint is at step {step}, not branch_step "
                               f"{config.branch_step} (it kept training, or branch_step is wrong)")
    source, recipe = saved_recipe(run), config.to_dict()
    differing = [f"{key}: {source.get(key)!r} there, {recipe.get(key)!r} here" for key in TRAINABLE_KEYS
                 if source.get(key) != recipe.get(key)]
    if differing:
        raise DistillSpecError(f"branch_from {run} trained other tensors ({'; '.join(differing)}); a branch keeps "
                               f"its source's {', '.join(TRAINABLE_KEYS)}")


def clear_run(out: Path) -> None:
    """Delete what an earlier run wrote into `out` (for --overwrite, once inputs are checked)."""
    for name in RUN_ENTRIES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_recipe(out: Path, config: DistillConfig) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out) / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
