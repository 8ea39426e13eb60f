"""Stop strings: end generation when the new text contains one of them.

A stop string can span several tokens and a token can hold the end of one, so the check
is on decoded text. One speculative step emits up to gamma + 1 tokens at once; `StopStrings`
finds the first of them that completes a stop string, and the loop keeps the step's
tokens up to and including that one (the stop string stays in the output, as in HF's
`stop_strings`). Stopping depends only on the emitted tokens, so the output is the
target's own output cut at the first stop string, exactly as the reference loop cuts it.

The decode function is passed in (a tokenizer's `decode`), so the engine stays free of
tokenizer code.
"""

from __future__ import annotations

from typing import Callable

from ..errors import DistillSpecError

#: tokens of the committed text decoded with the new ones, beyond the longest stop string in
#: characters: covers a stop string begun before this step, and tokens that decode to nothing
_CONTEXT_SLACK = 8


def check_stop_strings(strings) -> list[str]:
    """The stop strings as a list, or a clear error: at least one, each a non-empty string."""
    strings = list(strings)
    if not strings or any(not isinstance(s, str) or not s for s in strings):
        raise DistillSpecError(f"stop strings must be non-empty strings, got {strings!r}")
    return strings


class StopStrings:
    """strings: the stop strings (non-empty); decode: token ids -> text."""

    def __init__(self, strings: list[str], decode: Callable[[list[int]], str]):
        self.strings, self.decode = check_stop_strings(strings), decode
        self.context = max(len(s) for s in strings) + _CONTEXT_SLACK

    def _hit(self, tokens: list[int], boundary: int) -> bool:
        """Whether the text of `tokens` holds a stop string that ends after character
        `boundary` (one lying wholly in the text before it was there before this step)."""
        text = self.decode(tokens)
        return any(s in text[max(0, boundary - len(s) + 1):] for s in self.strings)

    def keep(self, previous: list[int], emitted: list[int]) -> int | None:
        """How many of `emitted` to keep when one of them completes a stop string, else None.

        previous: the new tokens committed before this step.
        """
        if not emitted:
            return None
        window = previous[-self.context:]
        boundary = len(self.decode(window)) if window else 0
        if not self._hit(window + emitted, boundary):
            return None
        return next(k for k in range(1, len(emitted) + 1) if self._hit(window + emitted[:k], boundary))


def as_stop_strings(stop, tokenizer=None) -> StopStrings | None:
    """What a loop's `stop=` may be: None, a StopStrings, or stop strings (a list, a tuple or
    one string) with `tokenizer` (anything with `decode`) to read the text."""
    if stop is None or isinstance(stop, StopStrings):
        return stop
    strings = [stop] if isinstance(stop, str) else stop
    if not isinstance(strings, (list, tuple)):
        raise DistillSpecError(f"stop must be a list of strings or a StopStrings, got {type(stop).__name__}")
    check_stop_strings(strings)
    if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
        raise DistillSpecError("stop strings are checked on decoded text: pass tokenizer= (its decode reads the "
                               "tokens), or stop=StopStrings(strings, tokenizer.decode)")
    return StopStrings(list(strings), tokenizer.decode)


def cut_at_stop(stop: StopStrings | None, previous: list[int], emitted: list[int]) -> tuple[list[int], bool]:
    """(emitted up to the stop, whether a stop string ended generation)."""
    keep = None if stop is None else stop.keep(previous, emitted)
    return (emitted, False) if keep is None else (emitted[:keep], True)
