"""Answer accuracy for suites with numeric answers (generated math): the quality side of
lossy speculative decoding. Pure text functions.

An output counts as correct when a number in it equals the answer and that number is
not already in the question (so echoing the question scores nothing). Lenient for a
135M model that rarely states a final answer cleanly, and the same rule for every row.
"""

from __future__ import annotations

import re

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
