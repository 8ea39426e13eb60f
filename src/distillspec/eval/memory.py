"""Resident memory (RSS) of this process: now, and the peak while a block of code runs.

The peak is sampled by a background thread (psutil), so it can miss spikes shorter than
the sampling interval; generation holds its memory for far longer than that.
"""

from __future__ import annotations

import threading

import psutil

MIB = 1024 * 1024


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


class PeakRSS:
    """Context manager: `.peak_mib` is the highest RSS seen inside the block."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, process.memory_info().rss / MIB)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self.peak_mib = rss_mib()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, rss_mib())
