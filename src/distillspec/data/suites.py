"""Held-out prompts for measuring drafts: built-in suites, prompt sources, users' files.

The one place held-out prompts are assembled (bench, study, eval-draft and the trainer's
evaluation all call `heldout_items`). Built-in suites and prompt sources contribute only
the held-out side of the hash split that distillation uses (`sources.split_heldout`), so
a distilled draft is never measured on prompts it was trained on. A user's prompt file
given as a *suite* is used whole.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DistillSpecError
from .sources import Example, load_prompts, split_heldout
from .tokenize import TokenizedExample, tokenize_examples

#: suite name -> prompt source (see sources.py)
BUILTIN_SUITES = {"chat": "chitchat", "code": "humaneval", "stdlib": "stdlib", "math": "math", "explain": "explain",
                  "edit": "humaneval"}

#: what an "edit" prompt asks of a held-out HumanEval function (its prompt and canonical
#: solution): a small change, and the whole function back, as code assistants' edits go
EDIT_REQUEST = ("Add a check at the start of this function that raises ValueError when an argument is invalid. "
                "Reply with the whole function, docstring included, in one Python code block.")


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
    if name == "edit":
        return [edit_request(example) for example in heldout_examples(BUILTIN_SUITES[name], heldout_fraction)]
    if name in BUILTIN_SUITES:
        return heldout_examples(BUILTIN_SUITES[name], heldout_fraction)
    return load_prompts(name)


def edit_request(example: Example) -> Example:
    """A code example (prompt and reference solution) as a request to edit the whole function.

    Why: a reply that quotes its input is where prompt lookup drafts long right blocks, and
    the code suite's replies are new code. Built from the code suite's held-out functions,
    so a draft distilled on HumanEval's training side never sees them."""
    code = example.prompt + (example.reference or "")
    return Example(f"{EDIT_REQUEST}\n\n```python\n{code.rstrip()}\n```")


def heldout_examples(source: str, heldout_fraction: float) -> list[Example]:
    """The held-out side of a prompt source's split (e.g. 'chitchat+humaneval')."""
    _, heldout = split_heldout(load_prompts(source), heldout_fraction)
    if not heldout:
        raise DistillSpecError(f"the held-out split of {source!r} is empty (held-out fraction {heldout_fraction})")
    return heldout


def heldout_items(spec: str, tokenizer, *, heldout_fraction: float, chat: bool, max_prompt_tokens: int,
                  max_new_tokens: int, limit: int | None, suite: bool) -> list[TokenizedExample]:
    """The first `limit` held-out prompts of `spec` that fit in `max_prompt_tokens`, tokenized.

    suite: `spec` is a bench suite (chat, code, stdlib, math, or a prompt file used whole);
    otherwise a prompt source (as for distill --prompts), whose held-out split is used.
    """
    examples = suite_examples(spec, heldout_fraction) if suite else heldout_examples(spec, heldout_fraction)
    items = tokenize_examples(tokenizer, examples, chat, max_prompt_tokens, max_new_tokens, limit)
    if not items:
        raise DistillSpecError(f"{spec!r} has no held-out prompt of at most {max_prompt_tokens} tokens")
    return items


def split_items(examples: list[Example], tokenizer, *, heldout_fraction: float, chat: bool, max_prompt_tokens: int,
                max_new_tokens: int, source: str = "the prompts"
                ) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """(train, held-out) tokenized prompts of a source's examples, as distillation uses them."""
    train, heldout = split_heldout(examples, heldout_fraction)
    tokenized = [tokenize_examples(tokenizer, side, chat, max_prompt_tokens, max_new_tokens) for side in (train, heldout)]
    if not tokenized[0]:
        raise DistillSpecError(f"no training prompt of {source!r} fits in max_prompt_tokens={max_prompt_tokens}")
    return tokenized[0], tokenized[1]


def suite_label(name: str) -> str:
    return name if name in BUILTIN_SUITES else Path(name).stem

