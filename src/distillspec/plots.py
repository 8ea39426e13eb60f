"""PNG plots of training curves and benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training_log(log_path: Path, png_path: Path) -> Path | None:
    """Loss and evaluation metrics against step, from a distillation run's JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train and not evals:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    for key in ("expected_acceptance", "greedy_agreement", "greedy_acceptance_rate"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set(xlabel="step", ylabel="rate", title="held-out acceptance", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
