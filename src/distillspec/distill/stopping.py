"""Stop a training run cleanly on Ctrl-C or `kill`: finish the step, checkpoint, exit.

An interrupt that lands inside an optimizer update would leave weights half-updated, and
a checkpoint of them would not resume exactly. So the first SIGINT or SIGTERM only asks
the run to stop after the step under way (the loop checkpoints and raises
KeyboardInterrupt then); a second one interrupts at once, and the loop then saves only if
no update was under way. SIGTERM matters because schedulers, `timeout` and background
jobs (where SIGINT is ignored) all stop processes with it.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopRequests:
    """Context manager: while active, SIGINT/SIGTERM set `requested` (the second raises)."""

    def __init__(self, describe_step=lambda: "the current step"):
        self.requested = False
        self.describe_step = describe_step
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = signal.Signals(signum).name
        print(f"\ndistill: {name}: stopping after {self.describe_step()} (checkpoint saved then); "
              "send it again to stop at once", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
