"""Accuracy of generated outputs, the quality side of lossy speculative decoding. Pure text
functions; running a program is `code_tests.py`.

Two kinds of checkable suite:
- numeric answers (generated math): an output is correct when a number in it equals the
  answer and that number is not already in the question (so echoing the question scores
  nothing). Lenient for a small model that rarely states a final answer cleanly, and the
  same rule for every row.
- code with tests (HumanEval): the output becomes a program (`program_to_test`) that passes
  or fails the example's tests.
"""

from __future__ import annotations

import re

_FENCED = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def numbers_in(text: str) -> list[float]:
    return [float(m) for m in _NUMBER.findall(text.replace(",", ""))]


def answer_correct(output: str, question: str, answer: str) -> bool:
    expected = parse_number(answer)
    if expected is None:
        raise ValueError(f"answer {answer!r} is not a number")
    given = set(numbers_in(question))
    return any(abs(n - expected) <= 1e-9 * max(1.0, abs(expected)) and n not in given for n in numbers_in(output))


def scorable_indices(references: list[str | None]) -> list[int]:
    """Examples whose answer is a plain number (generated math also has fractions and
    expressions, which this scorer does not parse); accuracy is taken over these."""
    return [i for i, r in enumerate(references) if parse_number(r) is not None]


def answer_accuracy(outputs: list[str], questions: list[str], answers: list[str]) -> float | None:
    if not outputs:
        return None
    return sum(answer_correct(o, q, a) for o, q, a in zip(outputs, questions, answers)) / len(outputs)


def code_blocks(output: str) -> list[str]:
    """The fenced code blocks of a chat answer, Python or unlabelled ones, in order; a last
    block cut off by the token limit counts up to where it stops."""
    return [body for language, body in _FENCED.findall(output) if language.lower() in ("", "python", "py", "python3")]


def completion_body(completion: str) -> str:
    """A raw completion of a function prompt, up to the first line back at column 0 (the
    function's end: what comes next is new code the prompt did not ask for)."""
    kept = []
    for line in completion.splitlines():
        if line.strip() and not line[0].isspace() and kept and any(k.strip() for k in kept):
            break
        kept.append(line)
    return "\n".join(kept)


def program_to_test(output: str, prompt: str, tests: str) -> str:
    """The program that decides whether `output` solves a code `prompt`.

    An output whose first line is indented is a raw completion: it continues the prompt's
    function (a fence it writes later, after the function, is not its code). Otherwise it
    is a chat answer, judged by its first fenced block that defines a function (else its
    first block), placed after the prompt so that helpers the prompt defines stay defined.
    The tests come last.
    """
    first_line = next((line for line in output.splitlines() if line.strip()), "")
    blocks = [] if first_line[:1].isspace() else code_blocks(output)
    if blocks:
        code = next((b for b in blocks if re.search(r"^\s*def ", b, re.MULTILINE)), blocks[0])
        return f"{prompt}\n    pass\n\n{code}\n\n{tests}"
    return f"{prompt}{completion_body(output)}\n\n{tests}"
