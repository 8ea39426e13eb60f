"""What a distillation run has cost so far, read back from its log (for reports and notes).

A long run continues across sessions, possibly on different CPUs; each start or resume
logs the CPU it ran on, and each optimizer step its wall time and sequence count, so the
budget of a result (sequences, tokens, hours, machines) is stated from the run itself.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_budget(log_path: Path, up_to_step: int | None = None) -> dict:
    """Steps, sequences, training tokens and hours of a run, and the CPUs its parts ran on.

    up_to_step: count only the steps up to this one (a snapshot measured mid-run, when the
    run itself has gone further).
    """
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r and (up_to_step is None or r["step"] <= up_to_step)]
    cpus = sorted({r["cpu"] for r in records if r.get("event") in ("start", "resume") and "cpu" in r})
    return {
        "steps": max((r["step"] for r in steps), default=0),
        "sequences": sum(r.get("sequences", 0) for r in steps),
        "loss_tokens": round(sum(r["tokens_per_second"] * r["seconds"] for r in steps)),
        "train_hours": round(sum(r["seconds"] for r in steps) / 3600, 3),
        "sessions": sum(1 for r in records if r.get("event") in ("start", "resume")),
        "cpus": cpus,
    }
