"""Streamed text as OpenAI clients expect it: deltas that never show a stop string.

Why: the engine ends a reply after the token that completes a stop string, but OpenAI's
API returns the text *before* the stop string. While streaming, text that may be the start
of a stop string is held back until the next tokens show whether it is one.
"""

from __future__ import annotations


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could begin one of `stops` (kept unsent)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def cut_at_first_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one occurs)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class StopTextStream:
    """Feeds the full decoded text as it grows; `emit` returns what may be sent now."""

    def __init__(self, stops: list[str] | None):
        self.stops = list(stops or [])
        self.sent = 0  # characters of the text already sent
        self.stopped = False

    def emit(self, text: str, final: bool = False) -> str:
        """The unsent part of `text` that is safe to send: up to the first stop string (then
        nothing more, ever), holding back a possible stop-string start unless `final`."""
        if self.stopped:
            return ""
        visible, hit = cut_at_first_stop(text, self.stops)
        end = len(visible) if hit or final else len(visible) - held_back(visible, self.stops)
        self.stopped = hit
        if end <= self.sent:
            return ""
        delta, self.sent = visible[self.sent:end], end
        return delta
