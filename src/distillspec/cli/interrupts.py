"""Ctrl-C that stops a command wherever it lands, even inside library code that catches it.

Why: a SIGINT in a command's first seconds lands inside library imports. transformers'
lazy modules turn the KeyboardInterrupt into `ModuleNotFoundError: Could not import
module ...`, and other import code swallows it, so the command printed a wrong error six
seconds later or ran on to the end (seen in CI). Here the first SIGINT is recorded and
raised as Python would, then raised again every `repeat_s` until `main` has caught one;
any exception that ends a command after a request counts as the interruption.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupts:
    """Context manager around one command (main thread only; elsewhere it does nothing)."""

    def __init__(self, repeat_s: float = 0.2):
        self.repeat_s = repeat_s
        self.requested = False
        self._previous = None
        self._timer: threading.Timer | None = None
        self._settled = False

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.settle()
        if self._timer is not None:  # a repeat sent just before the cancel lands here, not in the restored handler
            self._timer.join()
            for _ in range(100):  # bytecodes, at which Python runs pending signal handlers
                pass
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def settle(self) -> None:
        """The interruption has reached `main`: stop repeating it."""
        self._settled = True
        if self._timer is not None:
            self._timer.cancel()

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self._settled or isinstance(sys.exc_info()[1], KeyboardInterrupt):
            return  # already on its way out
        self._timer = threading.Timer(self.repeat_s, os.kill, (os.getpid(), signal.SIGINT))
        self._timer.daemon = True
        self._timer.start()
        raise KeyboardInterrupt
