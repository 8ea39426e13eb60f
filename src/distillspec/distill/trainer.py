"""The DistillSpec training loop (one CPU, or many processes under `accelerate launch`).

Every micro-batch is seeded from (run seed, step, micro-batch, rank), so data order,
on-policy sampling and the lambda coin flips are the same whether a run is continuous or
resumed from a checkpoint; `--resume` therefore continues exactly. Ctrl-C or SIGTERM
finishes the step under way, saves a checkpoint and exits; a second one stops at once,
saving the last completed step unless an optimizer update was under way (`stopping.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..data.sources import load_prompts, split_heldout
from ..data.suites import split_items
from ..data.tokenize import pad_id_for
from ..engine.inputs import eos_ids_for
from ..errors import DistillSpecError
from ..cpu import cpu_info, has_native_bf16
from ..models.adapters import (add_lora, is_peft_model, merged_model, sampling_snapshot, save_adapter,
                               underlying_model)
from ..models.drafts import draft_from_spec, save_draft
from ..models.load import load_model
from .batches import (batch_indices, cached_batch, distill_loss, fill_teacher_cache, make_batch, make_scored_batch,
                      step_seed)
from .checkpoint import find_checkpoint, load_branch_point, load_checkpoint, save_checkpoint
from .config import DistillConfig
from .curves import plot_training_log
from .run_folder import check_run_folder, clear_run, write_recipe
from .evaluate import engine_acceptance, heldout_expected_acceptance, sample_eval_text, score_text
from .stopping import StopRequests
from .teacher_cache import TeacherCache, cache_key
from .teachers import TorchTeacher


def lr_lambda(config: DistillConfig):
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def schedule_at(optimizer, config: DistillConfig, step: int):
    """This recipe's schedule, positioned at `step`, over an optimizer whose state came from
    another run (a branch): its groups take this recipe's lr and weight decay."""
    for group in optimizer.param_groups:
        group.update(lr=config.lr, initial_lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config), last_epoch=step - 1)


def source_evals(run: Path, step: int) -> list[dict]:
    """The evaluations another run logged at `step`, marked with where they come from."""
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return []
    records = [json.loads(line) for line in lines if line.strip()]
    return [{**r, "source": str(run)} for r in records if r.get("event") == "eval" and r.get("step") == step]


def resolve_target_dtype(name: str) -> str:
    """'auto': bf16 where the CPU multiplies bf16 natively (AMX / AVX-512 bf16) or on a GPU, else fp32.

    On an AVX2-only CPU a bf16 pass over many tokens is emulated and several times slower
    than fp32, so the target scores in fp32 there.
    """
    if name != "auto":
        return name
    return "bfloat16" if torch.cuda.is_available() or has_native_bf16() else "float32"


def freeze_shared(draft, target) -> int:
    """Freeze the target, and draft tensors that are the target's own (shared embedding/head).

    Returns the trainable count. Draft tensors already frozen (a LoRA adapter's base) stay so.
    target None: a teacher outside torch (llama.cpp), which shares nothing.
    """
    target_params = list(target.parameters()) if target is not None else []
    target_ids = {id(p) for p in target_params}
    for p in target_params:
        p.requires_grad_(False)
    trainable = 0
    for p in draft.parameters():
        if id(p) in target_ids:
            p.requires_grad_(False)
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        raise DistillSpecError("the draft has no trainable parameters (all are shared with the target)")
    return trainable


def freeze_embeddings(draft) -> None:
    """Freeze the draft's token embedding and LM head (tied or not): a pruned draft keeps the
    vocabulary it was pretrained with and relearns only its blocks, which saves the head's
    weight gradient and two Adam moments of every vocabulary row."""
    for module in (draft.get_input_embeddings(), draft.get_output_embeddings()):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(False)


#: sequences the llama.cpp teacher generates and scores per pass at most (throughput on 2
#: cores stops growing past a few: benchmarks/teacher_throughput.py)
LLAMA_TEACHER_SEQUENCES = 4


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


class DistillRun:
    """One distillation run: its data, models, optimizer and log, built once.

    The driver (`distill`) only decides when to step, evaluate, checkpoint and finish;
    each of those is a method here, so the loop stays readable and each part testable.
    """

    def __init__(self, config: DistillConfig, accelerator: Accelerator, resume: bool, overwrite: bool = False):
        self.config, self.accelerator = config, accelerator
        self.out = Path(config.out)
        check_run_folder(config, resume, overwrite)  # before anything is loaded or written
        checkpoint = find_checkpoint(self.out) if resume else None
        self._load_data_and_models()
        if accelerator.is_main_process and checkpoint is None:  # every input read: now the folder changes
            if overwrite:
                clear_run(self.out)
            write_recipe(self.out, config)
        accelerator.wait_for_everyone()
        draft_params = [p for p in self.draft.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(draft_params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.start_step = 0
        self._sampler = None  # the draft on-policy completions come from; rebuilt after each optimizer step
        self.updating = False  # True while the optimizer writes new weights
        self.target_eval_text = None  # the target's held-out completions and logits, from the first evaluation
        if checkpoint is not None:
            self.start_step = load_checkpoint(checkpoint, self.draft, self.optimizer, self.scheduler)["step"]
        elif config.branch_from:
            load_branch_point(Path(config.branch_from), self.draft, self.optimizer)
            self.scheduler = schedule_at(self.optimizer, config, config.branch_step)
            self.start_step = config.branch_step
        # The scheduler is stepped by hand once per optimizer step, so it is not prepared.
        self.wrapped, self.optimizer = accelerator.prepare(self.draft, self.optimizer)
        self.log = RunLog(self.out / "log.jsonl", accelerator.is_main_process,
                          self.start_step if checkpoint else None)
        cpu, flags = cpu_info()
        where = {"cpu": cpu, "cpu_flags": list(flags), "threads": torch.get_num_threads(),
                 "processes": accelerator.num_processes, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if checkpoint is None:
            branch = {"branch_from": config.branch_from} if config.branch_from else {}
            self.log.write({"step": self.start_step, "event": "start", "trainable_parameters": self.trainable,
                            "train_prompts": len(self.train), "heldout_prompts": len(self.heldout), **branch,
                            **where})
            if config.branch_from:  # the branch point's evaluation, so the run's own curves start there
                for record in source_evals(Path(config.branch_from), self.start_step):
                    self.log.write(record)
        else:
            self.log.write({"step": self.start_step, "event": "resume", **where})

    def _load_data_and_models(self) -> None:
        config, device = self.config, self.accelerator.device
        # prompts first: a bad prompt source fails before the slow model load
        examples = load_prompts(config.prompts, limit=config.prompt_limit or None)
        split_heldout(examples, config.heldout_fraction)
        if config.teacher_backend == "llama.cpp":
            self._load_llama_teacher()
        else:
            self.target, self.tokenizer = load_model(config.target, dtype=resolve_target_dtype(config.target_dtype),
                                                     device=device)
            if self.tokenizer is None:
                raise DistillSpecError(f"the target {config.target!r} has no tokenizer; distillation needs prompts "
                                       "as text")
            # the draft trains in float32 whatever the target's dtype (bf16 is autocast, if asked)
            self.draft = draft_from_spec(config.draft, self.target, self.tokenizer, dtype=torch.float32).to(device)
            self.teacher = TorchTeacher(self.target)
        if config.lora_rank:  # peft draws the adapter's initial A from the global generator: seed it
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(step_seed(config.seed, 2_000_003))
                self.draft = add_lora(self.draft, config.lora_rank, config.lora_alpha or None)
        if config.freeze_embeddings:
            freeze_embeddings(self.draft)
        self.trainable = freeze_shared(self.draft, self.target)
        self.eos_ids = eos_ids_for(self.target, self.tokenizer.eos_token_id)  # the tokenizer's EOS
        self.pad_id = pad_id_for(self.tokenizer)
        self.train, self.heldout = split_items(examples, self.tokenizer, heldout_fraction=config.heldout_fraction,
                                               chat=config.chat, max_prompt_tokens=config.max_prompt_tokens,
                                               max_new_tokens=config.max_new_tokens, source=config.prompts)
        self.cache = None
        if config.caches_teacher():
            folder = Path(config.teacher_cache) if config.teacher_cache else self.out / "teacher_cache"
            self.cache = TeacherCache(folder, cache_key(config), rank=self.accelerator.process_index)

    def _load_llama_teacher(self) -> None:
        """The target as llama.cpp runs its GGUF (`llama_teacher`), a few sequences per pass;
        the draft, a torch model of the same tokenizer, trains in float32."""
        from ..engine.llamacpp import LlamaCppModel
        from ..models.drafts import check_same_tokenizer
        from ..models.llamacpp_models import gguf_path_of, gguf_tokenizer
        from .llama_teacher import LlamaCppTeacher

        config = self.config
        path = gguf_path_of(config.target)
        sequences = min(config.batch_size, LLAMA_TEACHER_SEQUENCES)
        context = sequences * (config.max_prompt_tokens + max(config.max_new_tokens, config.spec_eval_tokens) + 8)
        self.teacher = LlamaCppTeacher(LlamaCppModel(path, context=context, sequences=sequences))
        self.target, self.tokenizer = None, gguf_tokenizer(path)
        self.draft, draft_tokenizer = load_model(config.draft, dtype=torch.float32, device=self.accelerator.device)
        check_same_tokenizer(self.tokenizer, draft_tokenizer)

    @property
    def engine_target(self):
        """What runs the target in the engine's evaluation: the torch model or the GGUF."""
        return self.target if self.target is not None else self.teacher.model

    @property
    def model(self):
        """The draft itself (not its DDP wrapper)."""
        return self.accelerator.unwrap_model(self.wrapped)

    def evaluate(self, step: int) -> dict:
        """Held-out expected acceptance and the engine's greedy alpha/tau (main process)."""
        config, metrics = self.config, {}
        if self.accelerator.is_main_process and self.heldout and config.eval_prompts:
            model = self.model
            model.eval()
            items = self.heldout[:config.eval_prompts]
            if self.target_eval_text is None:  # the target is frozen: sample and score its text once per run
                self.target_eval_text = score_text(self.teacher, sample_eval_text(
                    self.teacher, items, config.max_new_tokens, self.eos_ids, self.pad_id, seed=config.seed))
            metrics.update(heldout_expected_acceptance(self.teacher, model, items, config.max_new_tokens,
                                                       self.eos_ids, self.pad_id, seed=config.seed,
                                                       target_text=self.target_eval_text))
            if config.spec_eval_prompts:
                measured = engine_acceptance(self.engine_target, underlying_model(model), self.heldout[:config.spec_eval_prompts],
                                             gamma=config.eval_gamma, temperature=0.0,
                                             max_new_tokens=config.spec_eval_tokens, eos_ids=self.eos_ids)
                metrics.update({f"greedy_{k}": measured[k] for k in ("acceptance_rate", "block_efficiency")})
            model.train()
            self.log.write({"step": step, "event": "eval", **metrics})
        self.accelerator.wait_for_everyone()
        return metrics

    def checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:
            save_checkpoint(self.out, self.model, self.optimizer, self.scheduler,
                            {"step": step, "config": self.config.to_dict()})
        self.accelerator.wait_for_everyone()

    def train_step(self, step: int) -> dict:
        """One optimizer step over grad_accum micro-batches, each seeded from (seed, step, micro, rank)."""
        config, accelerator = self.config, self.accelerator
        started, tokens, loss_sum, on_policy = time.perf_counter(), 0, 0.0, 0
        for micro in range(config.grad_accum):
            seed = step_seed(config.seed, step, micro, accelerator.process_index)
            # HF generate (on-policy and target samples) and dropout draw from the global
            # generator: seed it inside a forked state, so the caller's stream is untouched
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(seed)
                loss_value, batch_tokens, used_on_policy = self._micro_step(step, micro, seed)
            loss_sum += loss_value
            tokens += batch_tokens
            on_policy += used_on_policy
        self.updating = True
        self.optimizer.step()
        self.scheduler.step()
        self.updating = False
        self._sampler = None
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        record = {"step": step + 1, "loss": loss_sum, "lr": self.scheduler.get_last_lr()[0],
                  "sequences": config.batch_size * config.grad_accum * accelerator.num_processes,
                  "tokens_per_second": tokens / seconds,
                  "on_policy_fraction": on_policy / (config.batch_size * config.grad_accum), "seconds": seconds}
        self.log.write(record)
        return record

    def stop_agreed(self, requested: bool) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def sampler(self):
        """The draft that samples on-policy completions: itself, or an int8 snapshot (`sample_quant`)."""
        if self.config.uses_on_policy() == 0.0 or self.config.sample_quant in (None, "none"):
            return self.model
        if self._sampler is None:
            self._sampler = sampling_snapshot(self.model, self.config.sample_quant)
        return self._sampler

    def _rng_devices(self) -> list:
        device = self.accelerator.device
        return [device] if device.type == "cuda" else []

    def _micro_step(self, step: int, micro: int, seed: int) -> tuple[float, int, int]:
        """Build one micro-batch and backpropagate its loss; returns (loss, loss tokens, on-policy count)."""
        config, accelerator = self.config, self.accelerator
        generator = torch.Generator().manual_seed(seed)
        indices = batch_indices(step * config.grad_accum + micro, accelerator.process_index,
                                accelerator.num_processes, config.batch_size, len(self.train), config.seed)
        teacher = None
        if self.cache is not None:
            fill_teacher_cache(self.cache, f"s{step}-m{micro}", self.train, indices, config.off_policy(),
                               self.teacher, config.teacher_top_k, config.max_new_tokens, config.sample_temperature,
                               self.eos_ids, self.pad_id, generator)
            batch, teacher = cached_batch(self.cache, self.train, indices, self.pad_id, config.teacher_top_k)
            used_on_policy = 0
        elif config.teacher_top_k and config.divergence != "ce":  # a sparse teacher of this step's text
            batch, used_on_policy, teacher = make_scored_batch(
                [self.train[i] for i in indices], config.uses_on_policy(), config.off_policy(), self.teacher,
                self.sampler(), config.max_new_tokens, config.sample_temperature, self.eos_ids, self.pad_id,
                generator, config.teacher_top_k)
        else:
            batch, used_on_policy = make_batch([self.train[i] for i in indices], config.uses_on_policy(),
                                               config.off_policy(), self.teacher, self.sampler(),
                                               config.max_new_tokens, config.sample_temperature, self.eos_ids,
                                               self.pad_id, generator)
        batch = batch.to(accelerator.device)
        last = micro == config.grad_accum - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(self.wrapped)
        with sync, torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = distill_loss(config.divergence, config.beta, self.target, self.wrapped, batch,
                                teacher) / config.grad_accum
            accelerator.backward(loss)
        return loss.item(), int(batch.loss_mask.sum()), used_on_policy

    def finish(self) -> None:
        """The trained draft as a standard HF folder (and its adapter, for LoRA), and the curves."""
        if self.accelerator.is_main_process:
            model = self.model
            if is_peft_model(model):
                save_adapter(model, self.out / "adapter", base_spec=self.config.draft,
                             extra={"recipe": self.config.to_dict()})
            save_draft(merged_model(model), self.tokenizer, self.out / "draft", self.config)
            plot_training_log(self.out / "log.jsonl", self.out / "curves.png")
        self.accelerator.wait_for_everyone()


def distill(config: DistillConfig, resume: bool = False, stop_at: int | None = None,
            accelerator: Accelerator | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) a distillation; returns the last evaluation metrics.

    stop_at: stop after this many completed steps as if interrupted. A folder that holds a
    run is refused unless `resume` (same recipe) or `overwrite` (see `run_folder`).
    """
    config.validate()
    # bf16 is applied with torch.autocast rather than Accelerator(mixed_precision=...):
    # accelerate's state is a process-wide singleton that refuses a second run in the
    # same process with a different precision.
    run = DistillRun(config, accelerator or Accelerator(), resume, overwrite)
    metrics = run.evaluate(0) if run.start_step == 0 else {}
    step = run.start_step
    run.wrapped.train()
    last = config.steps if stop_at is None else min(stop_at, config.steps)
    progress = tqdm(total=last, initial=min(step, last), disable=not run.accelerator.is_main_process,
                    desc="distill", dynamic_ncols=True)
    stop = StopRequests(lambda: f"step {step + 1}")
    try:
        with stop:
            while step < config.steps:
                if stop_at is not None and step >= stop_at:
                    run.checkpoint(step)
                    return metrics
                record = run.train_step(step)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:.0f}")
                if run.stop_agreed(stop.requested):
                    raise KeyboardInterrupt
                if step % config.save_every == 0 or step == config.steps:
                    run.checkpoint(step)
                if step % config.eval_every == 0 or step == config.steps:
                    metrics = run.evaluate(step) or metrics
    except KeyboardInterrupt:
        if run.updating:  # interrupted inside an optimizer update: its weights are half-new
            print("distill: interrupted inside an update; the last periodic checkpoint stands",
                  file=sys.stderr)
        else:
            run.checkpoint(step)  # the state after the last completed optimizer step
        raise
    finally:
        progress.close()
    run.finish()
    return metrics
