"""`distillspec <command>`: the command-line front end, one module per command.

Each module has `add_parser(subparsers)` and a function that turns the parsed arguments
into one library call. Model and training code (torch, transformers) is imported only when
a command runs, inside its function: that is the one reason for a function-local import in
this package, and it keeps `--help` and argument errors instant.

User mistakes raise `DistillSpecError`; `main` prints them as one line on stderr and exits
with status 2. With `--json`, the last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import DistillSpecError, DistillSpecWarning
from . import bench, distill, drafts, eval_draft, generate, prompts, serve, study
from .interrupts import Interrupts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillspec",
        description="Exact speculative decoding for Hugging Face causal LMs, and DistillSpec drafts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (generate, serve, distill, drafts, eval_draft, bench, study, prompts):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with Interrupts() as interrupts:  # Ctrl-C while torch imports (the first seconds) stops it too
        try:
            _quiet_libraries()
            return args.func(args) or 0
        except BaseException as exc:
            interrupts.settle()
            if interrupts.requested or isinstance(exc, KeyboardInterrupt):
                print("\ninterrupted", file=sys.stderr)
                return 130
            if isinstance(exc, DistillSpecError):
                print(f"distillspec: error: {exc}", file=sys.stderr)
                return 2
            raise


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """DistillSpecWarning as one `distillspec: warning: ...` line; other warnings as Python prints them."""
    if issubclass(category, DistillSpecWarning):
        print(f"distillspec: warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def _quiet_libraries() -> None:
    # peft reads transformers' deprecated `is_gradient_checkpointing` on every LoRA load; the
    # warning is about peft's code, not the user's, and repeats on every command
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.showwarning = _one_line_warning
    # read by transformers and huggingface_hub when they are imported, which commands do only
    # when they need them: importing transformers here made every argument error slow
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
