"""Prompt suites for the benchmark: chat, code, math (held-out splits) or a user's file.

The built-in suites take only prompts on the held-out side of the same hash split that
distillation uses (distill/data.py), so a distilled draft is never measured on prompts
it was trained on. A user's JSONL or text file is used whole.
"""

from __future__ import annotations

from pathlib import Path

from ..distill.data import Example, load_prompts, split_heldout
from ..errors import DistillSpecError

#: suite name -> prompt source (see distill/data.py)
BUILTIN_SUITES = {"chat": "chitchat", "code": "humaneval", "math": "math"}


def check_suite(name: str) -> None:
    """Fail before any model is loaded when a suite name cannot be one."""
    if name in BUILTIN_SUITES:
        return
    if Path(name).suffix not in (".jsonl", ".txt"):
        raise DistillSpecError(
            f"unknown suite {name!r}: use {', '.join(BUILTIN_SUITES)} or a .jsonl/.txt prompt file"
        )
    if not Path(name).is_file():
        raise DistillSpecError(f"prompt file {name!r} does not exist")


def suite_examples(name: str, heldout_fraction: float = 0.1) -> list[Example]:
    """The examples of a built-in suite's held-out split, or of a user's prompt file."""
    check_suite(name)
    if name in BUILTIN_SUITES:
        _, heldout = split_heldout(load_prompts(BUILTIN_SUITES[name]), heldout_fraction)
        if not heldout:
            raise DistillSpecError(f"the held-out split of suite {name!r} is empty")
        return heldout
    return load_prompts(name)


def suite_label(name: str) -> str:
    return name if name in BUILTIN_SUITES else Path(name).stem
