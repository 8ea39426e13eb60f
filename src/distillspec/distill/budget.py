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
    run itself has gone further). A branch (`branch_from`) counts its source's budget up to
    the branch point too, since its weights cost that; `branched_from` says how it splits.
    """
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    own = _own_budget(records, up_to_step)
    start = next((r for r in records if r.get("event") == "start"), {})
    source = start.get("branch_from")
    if not source:
        return own
    split = {"run": source, "step": start["step"], "own_sequences": own["sequences"],
             "own_train_hours": own["train_hours"]}
    source_log = _source_log(Path(log_path).parent, source)
    if source_log is None:
        return {**own, "branched_from": {**split, "source": "log not found: the totals are this run's alone"}}
    before = run_budget(source_log, up_to_step=start["step"])
    return {
        "steps": own["steps"],
        **{key: round(before[key] + own[key], 3) for key in ("sequences", "loss_tokens", "train_hours", "sessions")},
        "cpus": sorted(set(before["cpus"]) | set(own["cpus"])),
        "branched_from": split,
    }


def _own_budget(records: list[dict], up_to_step: int | None) -> dict:
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


def _source_log(run: Path, source: str) -> Path | None:
    """The source run's log: its path as the recipe gave it (relative to where the branch
    started), else beside this run's folder (the usual runs/ layout, read from elsewhere)."""
    for candidate in (Path(source), run.parent / Path(source).name):
        if (candidate / "log.jsonl").is_file():
            return candidate / "log.jsonl"
    return None
