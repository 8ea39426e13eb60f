"""`distillspec distill`: a recipe (JSON and/or options) -> `distill.trainer.distill`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..data.sources import BUILTIN_SOURCES
from ..distill.config import DistillConfig
from .argtypes import finite_float, json_line, positive_int

HELP = {
    "target": "target model spec ('default', .gguf, HF folder, cached hub id)",
    "draft": "draft to start from: 'layers:0,1,28,29' (subset of the target) or a model folder",
    "prompts": f"prompt source: {', '.join(BUILTIN_SOURCES)}, a .jsonl/.txt file, or several joined with '+'; a source ending in ':N' gives its first N prompts (explain+chitchat:1200)",
    "out": "run folder: config, log.jsonl, checkpoint/, draft/ (the result), curves.png",
    "divergence": "fkl | rkl | jsd | tvd, or ce for the supervised baseline",
    "beta": "JSD(beta) interpolation, in [0, 1]",
    "data_source": "completions from: fixed (the data set), target, draft (on-policy) or mixed",
    "on_policy_fraction": "lambda for 'mixed': probability an example's completion is draft-generated",
    "off_policy_source": "what 'mixed' uses when not on-policy: fixed or target",
    "sample_quant": "on-policy completions from the draft as is (none) or from an int8 weight-only snapshot of "
                    "it, rebuilt each step (int8: the deployed form; it was several times SLOWER than fp32 for "
                    "batched sampling on an AVX2-only CPU: measure yours with benchmarks/distill_step.py)",
    "target_dtype": "the target's weights: float32, bfloat16, or auto (bf16 only where the CPU multiplies "
                    "bf16 natively: AMX / AVX-512 bf16; an AVX2 CPU scores far faster in fp32)",
    "lora_rank": "0: train every draft weight; r > 0: train a peft LoRA adapter of rank r on all linear "
                 "layers of the draft's blocks (out/adapter/ beside the merged out/draft/)",
    "lora_alpha": "LoRA scale numerator; 0 means 2 x rank",
    "freeze_embeddings": "full fine-tuning (lora_rank 0) of the blocks alone: the token embedding and LM head "
                         "keep their pretrained values, which saves their gradients and optimizer state (on "
                         "the Qwen 0.5B, 136M of its parameters); meant for pruned drafts that keep the "
                         "vocabulary but must relearn their layers",
    "teacher_top_k": "k > 0 with --data-source fixed or target: keep the target's top-k log-probabilities "
                     "of every example on disk and train on them, so later epochs run no target pass",
    "teacher_cache": "folder of the top-k cache ('' : OUT/teacher_cache); runs with the same data settings "
                     "may share it, other settings are refused",
    "sample_temperature": "temperature of generated completions (draft or target samples)",
    "max_new_tokens": "completion length during training",
    "max_prompt_tokens": "longer prompts are skipped",
    "prompt_limit": "use only the first N prompts of the source (0: all)",
    "chat": "wrap prompts in the target's chat template when it has one",
    "batch_size": "examples per process per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "steps": "optimizer steps: the length of the learning-rate schedule (see --stop-at to stop earlier)",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "min_lr_ratio": "cosine decay floor, as a fraction of --lr",
    "weight_decay": "AdamW weight decay",
    "bf16": "bf16 autocast of the draft's passes; master weights stay fp32",
    "heldout_fraction": "fraction of prompts (by hash) kept out of training for evaluation",
    "eval_every": "evaluate every N steps (and at the last)",
    "eval_prompts": "held-out prompts for expected acceptance on target text (0: no evaluation during the run)",
    "spec_eval_prompts": "held-out prompts run through the speculative engine at each evaluation (0: none)",
    "spec_eval_tokens": "new tokens per engine-evaluated prompt",
    "eval_gamma": "gamma of the engine evaluation",
    "save_every": "checkpoint every N steps (a stop request also checkpoints)",
    "seed": "seeds data order, samples and LoRA init; a resumed run replays them exactly",
    "branch_from": "a second stage: start from this run folder's checkpoint (weights, Adam moments, step) "
                   "under this recipe (another data source, divergence or lr), continuing its data order; "
                   "the source folder is only read, so one warm-up can feed several arms",
    "branch_step": "the step that --branch-from's checkpoint must be at (this run trains from there to --steps)",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distill a draft toward its target (DistillSpec)",
        description="Train a draft so that the target accepts more of its tokens. Options override "
                    "--config; the run folder keeps a checkpoint, so --resume continues an interrupted run "
                    "exactly. Runs under `accelerate launch` for several processes.",
    )
    p.add_argument("--config", help="JSON file with any of the options below")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out, with the same recipe (a changed key is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds a run, deleting its log, checkpoint and draft (once "
                        "every input has been checked); without it such a folder is refused")
    p.add_argument("--stop-at", type=positive_int, default=None, metavar="STEP",
                   help="checkpoint and stop once STEP steps are done, keeping the --steps schedule, so runs "
                        "compared at equal budget share one schedule and a long run fits sittings; continue "
                        "later with --resume (not part of the recipe)")
    defaults = DistillConfig()
    for field in dataclasses.fields(DistillConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(default, bool) else \
            {"type": {float: finite_float, int: int, str: str}[type(default)]}
        p.add_argument(flag, **kind, default=None, help=f"{HELP.get(field.name, '')} (default {shown(default)})")
    p.set_defaults(func=run_distill)


def config_from_args(args) -> DistillConfig:
    data = DistillConfig.from_file(args.config).to_dict() if args.config else DistillConfig().to_dict()
    for field in dataclasses.fields(DistillConfig):
        value = getattr(args, field.name)
        if value is not None:
            data[field.name] = value
    return DistillConfig.from_dict(data).validate()


def shown(default) -> str:
    """A recipe default as the user would type it ('' would otherwise vanish)."""
    return repr(default) if default == "" else str(default)


def run_distill(args) -> int:
    config = config_from_args(args)  # torch-free: a bad recipe fails before the heavy imports
    from ..distill.trainer import distill  # torch: imported to run, never for --help (cli/__init__)

    resume_hint = f"distillspec distill --config {Path(config.out) / 'config.json'} --resume"
    try:
        metrics = distill(config, resume=args.resume, stop_at=args.stop_at, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\ninterrupted; checkpoint saved. Continue with: {resume_hint}")
        raise
    if args.stop_at is not None and args.stop_at < config.steps:
        print(f"stopped at step {args.stop_at} of {config.steps}; checkpoint saved. Continue with: {resume_hint}")
        print(json_line({"out": config.out, "stopped_at": args.stop_at, "metrics": metrics}))
        return 0
    print(json_line({"out": config.out, "draft": str(Path(config.out) / "draft"), "metrics": metrics}))
    return 0
