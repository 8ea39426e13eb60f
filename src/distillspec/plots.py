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
    for key in ("expected_acceptance", "greedy_agreement", "greedy_acceptance_rate",
                "expected_acceptance_on_draft_text"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set(xlabel="step", ylabel="rate", title="held-out acceptance", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def _grid_values(lookup: dict[str, float], divergences: list[str], sources: list[str]) -> list[list[float]]:
    nan = float("nan")
    return [[lookup.get(f"{d}-{s}", nan) for s in sources] for d in divergences]


def _heatmap(ax, values: list[list[float]], divergences: list[str], sources: list[str], title: str,
             vmin: float, vmax: float) -> None:
    ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(sources)), sources)
    ax.set_yticks(range(len(divergences)), divergences)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < (vmin + vmax) / 2
                        else "black")
    ax.set_title(title, fontsize=9)


def plot_study_grid(document: dict, png_path: Path) -> Path | None:
    """Heatmaps of the study, one row per suite: tau per divergence x data source at each
    temperature, then expected acceptance on held-out target text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    divergences, sources, gamma = document["divergences"], document["data_sources"], document["gamma"]
    rows, text_rows = document["rows"], document.get("text_acceptance") or []
    suites = sorted({r["suite"] for r in rows} | {r["suite"] for r in text_rows})
    temperatures = sorted({r["temperature"] for r in rows})
    columns = len(temperatures) + (1 if text_rows else 0)
    if not suites or not columns:
        return None
    fig, axes = plt.subplots(len(suites), columns, figsize=(3.8 * columns, 3.4 * len(suites)), squeeze=False)
    for line, suite in zip(axes, suites):
        for ax, temperature in zip(line, temperatures):
            cell = {r["run"]: r["block_efficiency"] for r in rows
                    if r["suite"] == suite and r["temperature"] == temperature}
            if not cell:  # a suite measured on text only (study --engine-suites)
                ax.axis("off")
                ax.set_title(f"{suite} T={temperature:g}: not run through the engine", fontsize=9)
                continue
            top = max(2.0, max(cell.values()))  # colour scale from tau = 1 to the best seen
            _heatmap(ax, _grid_values(cell, divergences, sources), divergences, sources,
                     f"{suite} T={temperature:g}: tau at gamma={gamma}\n({_baselines(cell)})", 1.0, top)
        if text_rows:
            accept = {r["run"]: r["expected_acceptance"] for r in text_rows if r["suite"] == suite}
            _heatmap(line[-1], _grid_values(accept, divergences, sources), divergences, sources,
                     f"{suite}: expected acceptance, target text\n({_baselines(accept)})", 0.0,
                     max(0.5, max(accept.values(), default=0.0)))
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def _baselines(cell: dict[str, float]) -> str:
    return ", ".join(f"{name} {cell[name]:.2f}" for name in ("ce-target", "undistilled") if name in cell)
