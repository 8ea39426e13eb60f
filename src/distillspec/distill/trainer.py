"""The DistillSpec training loop (one CPU, or many processes under `accelerate launch`).

Every micro-batch is seeded from (run seed, step, micro-batch, rank), so data order,
on-policy sampling and the lambda coin flips are the same whether a run is continuous or
resumed from a checkpoint; `--resume` therefore continues exactly. Ctrl-C saves a
checkpoint at the last completed step before exiting.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..decoding import eos_ids_for
from ..errors import DistillSpecError
from ..models import load_model
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import DistillConfig
from .data import load_prompts, split_heldout
from .drafts import draft_from_spec, save_draft
from .evaluate import heldout_expected_acceptance
from .report import evaluate_drafter
from .steps import batch_indices, distill_loss, make_batch, step_seed, tokenize_examples


def lr_lambda(config: DistillConfig):
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def freeze_shared(draft, target) -> int:
    """Freeze draft tensors that are the target's own (shared embedding/head); return trainable count."""
    target_ids = {id(p) for p in target.parameters()}
    for p in target.parameters():
        p.requires_grad_(False)
    trainable = 0
    for p in draft.parameters():
        p.requires_grad_(id(p) not in target_ids)
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        raise DistillSpecError("the draft has no trainable parameters (all are shared with the target)")
    return trainable


class RunLog:
    """JSONL metrics log; on resume, records past the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled and keep_until_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def distill(config: DistillConfig, resume: bool = False, stop_at: int | None = None,
            accelerator: Accelerator | None = None) -> dict:
    """Run (or resume) a distillation; returns the last evaluation metrics.

    stop_at: stop after this many completed steps as if interrupted (used by tests).
    """
    config.validate()
    # bf16 is applied with torch.autocast below rather than Accelerator(mixed_precision=...):
    # accelerate's state is a process-wide singleton that refuses a second run in the
    # same process with a different precision.
    accelerator = accelerator or Accelerator()
    out = Path(config.out)
    checkpoint = find_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise DistillSpecError(f"--resume: no checkpoint in {out}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    # prompts first: a bad prompt source fails before the slow model load
    examples = load_prompts(config.prompts, limit=config.prompt_limit or None)
    train_examples, heldout_examples = split_heldout(examples, config.heldout_fraction)
    target, tokenizer = load_model(config.target, dtype="float32", device=accelerator.device)
    if tokenizer is None:
        raise DistillSpecError(f"the target {config.target!r} has no tokenizer; distillation needs prompts as text")
    draft = draft_from_spec(config.draft, target, tokenizer).to(accelerator.device)
    trainable = freeze_shared(draft, target)
    eos_ids = eos_ids_for(target, tokenizer.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    train = tokenize_examples(tokenizer, train_examples, config.chat, config.max_prompt_tokens, config.max_new_tokens)
    heldout = tokenize_examples(tokenizer, heldout_examples, config.chat, config.max_prompt_tokens,
                                config.max_new_tokens)
    if not train:
        raise DistillSpecError(f"no training prompt fits in max_prompt_tokens={config.max_prompt_tokens}")

    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    start_step = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, draft, optimizer, scheduler)
        start_step = state["step"]
    # The scheduler is stepped by hand once per optimizer step, so it is not prepared.
    wrapped, optimizer = accelerator.prepare(draft, optimizer)
    log = RunLog(out / "log.jsonl", accelerator.is_main_process, start_step if checkpoint else None)
    if accelerator.is_main_process and checkpoint is None:
        log.write({"step": 0, "event": "start", "trainable_parameters": trainable,
                   "train_prompts": len(train), "heldout_prompts": len(heldout)})

    def evaluate(step: int) -> dict:
        metrics = {}
        if accelerator.is_main_process and heldout:
            model = accelerator.unwrap_model(wrapped)
            model.eval()
            metrics.update(heldout_expected_acceptance(target, model, heldout[:config.eval_prompts], config.max_new_tokens,
                                                       eos_ids, pad_id, seed=config.seed))
            if config.spec_eval_prompts:
                measured = evaluate_drafter(target, model, heldout[:config.spec_eval_prompts], gamma=config.eval_gamma,
                                            temperature=0.0, max_new_tokens=config.spec_eval_tokens, eos_ids=eos_ids,
                                            baseline=False)
                measured = {k: measured[k] for k in ("acceptance_rate", "block_efficiency")}
                metrics.update({f"greedy_{k}": v for k, v in measured.items()})
            model.train()
            log.write({"step": step, "event": "eval", **metrics})
        accelerator.wait_for_everyone()
        return metrics

    def checkpoint_now(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(out, accelerator.unwrap_model(wrapped), optimizer, scheduler,
                            {"step": step, "config": config.to_dict()})
        accelerator.wait_for_everyone()

    metrics: dict = {}
    if start_step == 0:
        metrics = evaluate(0)
    step = start_step
    wrapped.train()
    progress = tqdm(total=config.steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc="distill", dynamic_ncols=True)
    try:
        while step < config.steps:
            if stop_at is not None and step >= stop_at:
                checkpoint_now(step)
                return metrics
            started, tokens, loss_sum, on_policy = time.perf_counter(), 0, 0.0, 0
            for micro in range(config.grad_accum):
                index = step * config.grad_accum + micro
                seed = step_seed(config.seed, step, micro, accelerator.process_index)
                torch.manual_seed(seed)
                generator = torch.Generator().manual_seed(seed)
                items = [train[i] for i in batch_indices(index, accelerator.process_index, accelerator.num_processes,
                                                         config.batch_size, len(train), config.seed)]
                model = accelerator.unwrap_model(wrapped)
                batch, used_on_policy = make_batch(items, config.uses_on_policy(), config.off_policy(), target, model,
                                                   config.max_new_tokens, config.sample_temperature, eos_ids, pad_id,
                                                   generator)
                batch = batch.to(accelerator.device)
                sync = accelerator.no_sync(wrapped) if micro < config.grad_accum - 1 else contextlib.nullcontext()
                with sync, torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    loss = distill_loss(config.divergence, config.beta, target, wrapped, batch) / config.grad_accum
                    accelerator.backward(loss)
                loss_sum += loss.item()
                tokens += int(batch.loss_mask.sum())
                on_policy += used_on_policy
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - started
            record = {"step": step, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_second": tokens / seconds, "on_policy_fraction": on_policy /
                      (config.batch_size * config.grad_accum), "seconds": seconds}
            log.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{tokens / seconds:.0f}")
            if step % config.save_every == 0 or step == config.steps:
                checkpoint_now(step)
            if step % config.eval_every == 0 or step == config.steps:
                metrics = evaluate(step) or metrics
    except KeyboardInterrupt:
        checkpoint_now(step)  # the state after the last completed optimizer step
        raise
    finally:
        progress.close()
    if accelerator.is_main_process:
        save_draft(accelerator.unwrap_model(wrapped), tokenizer, out / "draft", config)
        from ..plots import plot_training_log

        plot_training_log(out / "log.jsonl", out / "curves.png")
    accelerator.wait_for_everyone()
    return metrics
