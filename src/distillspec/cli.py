"""`distillspec <command>`: the command-line front end.

User mistakes raise `DistillSpecError`; `main` prints them as one line on stderr and exits
with status 2. With `--json`, the last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .argtypes import positive_int
from .errors import DistillSpecError

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with speculative decoding",
        description=(
            "Generate from TARGET with tokens proposed by a draft and verified by the target. "
            "The output follows the target's own distribution exactly (greedy output equals "
            "the target's greedy output) unless --lenience < 1 is given."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", default="default",
                   help="'default' (SmolLM2-135M-Instruct), a .gguf file, a HF folder or a cached hub id")
    p.add_argument("--draft", default="default",
                   help="'default', 'layers:0,1,29' (a subset of the target's layers), a model spec, "
                        "or 'prompt-lookup'")
    p.add_argument("--drafter", choices=["model", "prompt-lookup"], default="model",
                   help="'prompt-lookup' ignores --draft and drafts by n-gram lookup in the context")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--gamma", type=int, default=4, help="tokens drafted per step (initial value if adaptive)")
    p.add_argument("--adaptive-gamma", choices=["none", "heuristic", "cost-model"], default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lenience", type=float, default=None,
                   help="lossy acceptance epsilon in (0, 1]; 1 (or unset) is exact")
    p.add_argument("--lenience-function", choices=["linear", "square", "power"], default="linear",
                   help="f(p, eps): p/eps, p/eps^2 or p^eps")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", action="store_true", help="also run the target alone and compare speeds")
    p.add_argument("--show-acceptance", action="store_true",
                   help="colour accepted draft tokens (green) vs target-produced tokens")
    p.add_argument("--json", action="store_true", help="print one JSON document as the last stdout line")
    p.set_defaults(func=run_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillspec",
        description="Exact speculative decoding for Hugging Face causal LMs, and DistillSpec drafts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(subparsers)
    from .distill_cmd import add_distill_parsers

    add_distill_parsers(subparsers)
    from .bench_cmd import add_bench_parser

    add_bench_parser(subparsers)
    from .study import add_study_parser

    add_study_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args) or 0
    except DistillSpecError as exc:
        print(f"distillspec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_generate(args) -> int:
    from .generate_cmd import generate_command

    return generate_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
