"""`distillspec bench`: measure drafts, gammas and baselines side by side."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..choices import BACKEND_CHOICES
from ..data.suites import BUILTIN_SUITES
from .argtypes import DefaultsHelpFormatter, add_quant_options, add_stop_option, comma_list, \
    finite_float, json_line, positive_int, seed_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark speculative decoding against llama.cpp or Hugging Face, side by side",
        description=(
            "Measure, in one run on the same prompts, our speculative decoding with each draft for every gamma and "
            "adaptive policy, greedy and sampled, beside the strongest baselines of its backend: on llama.cpp, "
            "llama.cpp's own plain decode and speculative decoding of the same GGUF files; on torch, the target "
            "alone, HF generate and HF assisted generation. Warm-up runs are excluded; each prompt counts by its "
            "median repeat. Writes bench.json, bench.md and PNG plots to --out; the two reports are rewritten "
            "after every prompt round (marked partial), so an interrupted bench keeps what it measured."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--target", default="default", help="target model spec")
    p.add_argument("--draft", action="append", dest="drafts", default=None,
                   help="draft spec (repeatable): default, layers:..., a folder, a model spec, prompt-lookup, or "
                        "prompt-lookup+SPEC (lookup where the context has a match, SPEC's model elsewhere); "
                        "a model draft may end in @int8 and/or @head=K (truncated head of the K tokens "
                        "most frequent in training text; no HF row, HF has no such heads) "
                        "[default: default, prompt-lookup and prompt-lookup+default]")
    p.add_argument("--suite", action="append", dest="suites", default=None,
                   help=f"{', '.join(BUILTIN_SUITES)} (held-out splits of the prompt sources of the same names; code is "
                        "HumanEval, chat is chitchat, edit asks for a small change to the code suite's functions, "
                        "and the whole function back: a reply that quotes its input) or a .jsonl/.txt prompt file (repeatable) [default: chat]")
    p.add_argument("--gammas", type=comma_list(int), default=[1, 2, 4],
                   help="comma-separated fixed gammas, a row each per draft; '' for none (adaptive rows only)")
    p.add_argument("--adaptive", type=comma_list(str), default=["cost-model"],
                   help="adaptive gamma policies to add per draft (heuristic, cost-model, ramp, or auto: ramp for "
                        "prompt-lookup and cost-model for the others, as generate's default); '' for none. They "
                        "start from the largest of --gammas (3 without any)")
    p.add_argument("--temperatures", type=comma_list(finite_float), default=[0.0, 1.0], help="comma-separated; 0 is greedy")
    p.add_argument("--lenience", type=comma_list(finite_float), default=[],
                   help="lossy epsilons < 1 to add (sampled rows, largest gamma, each model draft)")
    p.add_argument("--lenience-functions", type=comma_list(str), default=["linear"],
                   help="comma-separated: linear (p/eps), square (p/eps^2), power (p^eps)")
    p.add_argument("--num-prompts", type=positive_int, default=8, help="prompts per suite")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=256,
                   help="skip a suite's prompts longer than this (in tokens, chat template included)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="new tokens per prompt")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per prompt (median kept)")
    add_quant_options(p)
    p.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16: weights of the target and model drafts")
    p.add_argument("--device", default="cpu", help="cpu, cuda or another torch device")
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate baselines")
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed of the T > 0 rows")
    add_stop_option(p, "end every row's output once it contains TEXT, HF's included")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="llama.cpp: GGUF target and drafts run by llama.cpp, beside llama.cpp's own plain decode and "
                        "(with `make bench-tools` built) its own speculative decoding with each GGUF draft; torch: "
                        "beside HF generate and assisted generation. auto: llama.cpp for a GGUF target on the CPU")
    p.add_argument("--llama-tools", default=None, metavar="DIR",
                   help="folder holding llama-speculative-simple [default: the build `make bench-tools` cached]")
    p.add_argument("--out", default="bench-results", help="folder for bench.json, bench.md and plots")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="also write the markdown report to FILE (e.g. docs/benchmarks.md, regenerated whole by each run)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document on the last line")
    p.set_defaults(func=run_bench_command)


def settings_from_args(args):
    from ..eval.bench import DEFAULT_BENCH_DRAFTS, BenchSettings

    return BenchSettings(
        target=args.target, drafts=args.drafts if args.drafts is not None else list(DEFAULT_BENCH_DRAFTS),
        suites=args.suites or ["chat"], gammas=args.gammas, adaptive=args.adaptive,
        temperatures=args.temperatures, lenience=args.lenience, lenience_functions=args.lenience_functions,
        num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
        repeats=args.repeats, dtype=args.dtype, draft_quant=args.draft_quant, target_quant=args.target_quant,
        linear_layout=args.linear_layout, device=args.device, chat=not args.no_chat,
        hf_baselines=not args.no_hf, seed=args.seed, stop=args.stop, backend=args.backend,
        llama_tools=args.llama_tools,
    ).validate()


def run_bench_command(args) -> int:
    from ..eval.bench import run_bench
    from ..eval.report import markdown_report, write_outputs, write_report, write_tables

    settings = settings_from_args(args)
    command = "distillspec " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    # bench.json and bench.md are rewritten after every prompt round, so an interrupted
    # bench keeps what it measured; the plots come with the finished report
    document = run_bench(settings, on_update=lambda partial: write_tables({**partial, "command": command},
                                                                            Path(args.out)))
    document["command"] = command
    written = write_outputs(document, Path(args.out))
    if args.report:
        written["report"] = write_report(document, Path(args.report))
    if args.json:
        print(json_line(document))
        return 0
    print(markdown_report(document))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0
