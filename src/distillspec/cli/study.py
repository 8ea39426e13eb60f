"""`distillspec study`: argparse for the DistillSpec grid (`eval.study` does the work)."""

from __future__ import annotations

from pathlib import Path

from ..choices import DATA_SOURCES, DIVERGENCES
from ..data.suites import BUILTIN_SUITES
from .argtypes import DefaultsHelpFormatter, comma_list, finite_float, positive_int

STUDY_DESCRIPTION = (
    "The DistillSpec grid at equal training budget: each divergence x data source is distilled from the same "
    "starting draft with the same recipe and steps, then measured with the engine on held-out suites at one "
    "gamma, greedy and sampled, beside the supervised baseline (cross-entropy on target-generated text) and the "
    "undistilled draft. Resumable: finished runs are reused, interrupted ones continue from their checkpoint."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="the DistillSpec grid: divergence x data source at equal budget, measured on held-out suites",
        description=STUDY_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--config", default="recipes/study-base.json", help="base recipe (JSON, as for distill)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps per run: the schedule's length (default: the recipe's)")
    p.add_argument("--stop-at", type=positive_int, default=None, metavar="STEP",
                   help="train each run only to this step of its schedule and measure it there (its checkpoint, "
                        "written as runs/<cell>/step-STEP); a later call with a larger STEP continues the runs")
    p.add_argument("--divergences", type=comma_list(str, DIVERGENCES), default=list(DIVERGENCES),
                   help="comma-separated")
    p.add_argument("--data-sources", type=comma_list(str, DATA_SOURCES), default=list(DATA_SOURCES),
                   help="comma-separated")
    p.add_argument("--no-supervised", action="store_true", help="skip the cross-entropy baseline")
    p.add_argument("--runs", default="runs/study", help="folder of the distillation runs")
    p.add_argument("--out", default="study-results", help="folder for study.json, study.md and study.png")
    p.add_argument("--suites", type=comma_list(str), default=["chat", "code"],
                   help=f"comma-separated: {', '.join(BUILTIN_SUITES)}, or JSONL/TXT prompt files")
    p.add_argument("--engine-suites", type=comma_list(str), default=None,
                   help="run only these of --suites through the engine for alpha/tau (default: all); "
                        "the others get expected acceptance on target text only")
    p.add_argument("--gamma", type=positive_int, default=4, help="draft tokens per target pass in the engine")
    p.add_argument("--temperatures", type=comma_list(finite_float), default=[0.0, 1.0], help="comma-separated; 0 is greedy")
    p.add_argument("--num-prompts", type=positive_int, default=8, help="held-out prompts per suite")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="new tokens per prompt")
    p.add_argument("--dtype", default="float32", help="dtype of the evaluation (acceptance, not speed)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the runs that exist; train nothing")
    p.add_argument("--train-only", action="store_true",
                   help="train the grid (to --stop-at) and write no report: measure later with --eval-only, "
                        "after more cells have trained")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite study.md and study.png from the study.json in --out; train and evaluate nothing")
    p.set_defaults(func=run_study_command)


def run_study_command(args) -> int:
    from ..distill.config import DistillConfig
    from ..errors import DistillSpecError
    from ..eval.study import rewrite_report, run_study, train_grid

    if args.report_only:
        print(rewrite_report(Path(args.out)))
        return 0
    if args.eval_only and args.train_only:
        raise DistillSpecError("--eval-only and --train-only exclude each other: pick one")
    base = DistillConfig.from_file(args.config).validate()
    if args.train_only:
        train_grid(base, steps=args.steps or base.steps, divergences=args.divergences,
                   data_sources=args.data_sources, supervised=not args.no_supervised, runs=Path(args.runs),
                   stop_at=args.stop_at)
        print(f"trained the grid in {args.runs}; measure it with --eval-only")
        return 0
    print(run_study(base, steps=args.steps or base.steps, divergences=args.divergences,
                    data_sources=args.data_sources, supervised=not args.no_supervised, runs=Path(args.runs),
                    out=Path(args.out), suites=args.suites, engine_suites=args.engine_suites, gamma=args.gamma,
                    temperatures=args.temperatures, num_prompts=args.num_prompts,
                    max_new_tokens=args.max_new_tokens, dtype=args.dtype, train=not args.eval_only,
                    stop_at=args.stop_at))
    return 0
