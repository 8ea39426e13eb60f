"""The training curves of a run (loss, held-out acceptance) as a PNG.

Uses matplotlib's object API (`Figure` + the Agg canvas): no global backend switch and no
pyplot state, so it is safe inside any host program.
"""

from __future__ import annotations

import json
from pathlib import Path


def plot_training_log(log_path: Path, png_path: Path) -> Path | None:
    """Loss and evaluation metrics against step, from a distillation run's JSONL log."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train and not evals:
        return None
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    for key in ("expected_acceptance", "greedy_agreement", "greedy_acceptance_rate",
                "expected_acceptance_on_draft_text"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set(xlabel="step", ylabel="rate", title="held-out acceptance", ylim=(0, 1))
    if evals:
        right.legend()
    else:  # a run without evaluation (eval_prompts 0, e.g. a study cell) says so instead of an empty legend
        right.text(0.5, 0.5, "no evaluation in this run", ha="center", va="center", transform=right.transAxes)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return Path(png_path)
