"""Running generated code against an example's tests: pass@1 of a code suite.

Generated code is untrusted, so each program runs in its own Python process, in isolated
mode (`-I`: no user site, no environment variables, no current directory on the path),
inside an empty temporary directory, with no stdin and a wall-clock limit. This is the
usual HumanEval practice, and it protects against mistakes, not against a hostile model:
run it only on models you would let run code on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .quality import program_to_test

#: seconds a program may run; HumanEval's checks take well under one on this machine kind
TIMEOUT_S = 10.0


def program_passes(program: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when `program` exits with status 0 within `timeout_s` seconds."""
    with tempfile.TemporaryDirectory(prefix="distillspec-check-") as folder:
        path = Path(folder) / "check.py"
        path.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", str(path)], cwd=folder, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def pass_at_1(outputs: list[str], prompts: list[str], tests: list[str], timeout_s: float = TIMEOUT_S,
              checked: dict[str, bool] | None = None) -> float | None:
    """The fraction of outputs whose program passes its example's tests (None for none).

    checked: verdicts by program text, read and filled, so that a caller scoring the same
    outputs again (a bench's report after each prompt round) runs each program once.
    """
    if not outputs:
        return None
    checked = {} if checked is None else checked
    passed = []
    for output, prompt, test in zip(outputs, prompts, tests):
        program = program_to_test(output, prompt, test)
        if program not in checked:
            checked[program] = program_passes(program, timeout_s)
        passed.append(checked[program])
    return sum(passed) / len(passed)
