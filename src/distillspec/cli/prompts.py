"""`distillspec prompts`: write a prompt source (or one side of its split) as JSONL.

Why: the built-in sources live in packages and code, and the train / held-out split is by
hash, so a user cannot see which prompts a draft trained on or a bench measured. The JSONL
is the format `--prompts` and `--suite` read back (prompt, completion, tests), so a source
can be inspected, edited, or measured whole: e.g. all 164 HumanEval problems with their
tests as one bench suite for a draft that never trained on HumanEval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .argtypes import DefaultsHelpFormatter, finite_float, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prompts",
        help="write a prompt source, or one side of its train / held-out split, as JSONL",
        description="Write the examples of a prompt source (humaneval, chitchat, stdlib, math, explain, sharegpt, "
                    "a file, or several joined with '+') as JSONL records {prompt, completion, tests}, the format "
                    "that --prompts and --suite read. --split picks the side of the hash split that distill "
                    "trains on (train) or that bench and eval-draft measure on (heldout).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("source", help="prompt source spec, as for distill --prompts")
    p.add_argument("--split", choices=["all", "train", "heldout"], default="all", help="which examples")
    p.add_argument("--heldout-fraction", type=finite_float, default=0.1, help="the split's held-out fraction")
    p.add_argument("--limit", type=positive_int, default=None, help="write at most this many (the first ones)")
    p.add_argument("--out", default=None, help="JSONL file to write (default: standard output)")
    p.set_defaults(func=prompts_command)


def prompts_command(args) -> int:
    from ..data.sources import example_record, examples_of_split, load_prompts
    from ..errors import DistillSpecError

    if args.out is not None and Path(args.out).suffix != ".jsonl":
        raise DistillSpecError(f"--out {args.out!r}: the file must end in .jsonl (the format it is read back as)")
    examples = examples_of_split(load_prompts(args.source), args.split, args.heldout_fraction)[:args.limit]
    lines = "".join(json.dumps(example_record(e), ensure_ascii=False) + "\n" for e in examples)
    if args.out is None:
        sys.stdout.write(lines)
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(lines, encoding="utf-8")
    print(f"wrote {len(examples)} examples ({args.source}, {args.split}) to {args.out}", file=sys.stderr)
    return 0
