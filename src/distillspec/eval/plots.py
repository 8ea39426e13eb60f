"""PNG plots of benchmark and study results (matplotlib object API, no display needed)."""

from __future__ import annotations

from pathlib import Path


def new_figure(rows: int = 1, columns: int = 1, figsize=(6, 4)):
    """(figure, axes [rows][columns]) drawn by the Agg canvas: matplotlib's object API, so no
    global backend switch and no pyplot state inside a library call."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def save_figure(fig, png_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
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
    divergences, sources, gamma = document["divergences"], document["data_sources"], document["gamma"]
    rows, text_rows = document["rows"], document.get("text_acceptance") or []
    suites = sorted({r["suite"] for r in rows} | {r["suite"] for r in text_rows})
    temperatures = sorted({r["temperature"] for r in rows})
    columns = len(temperatures) + (1 if text_rows else 0)
    if not suites or not columns:
        return None
    fig, axes = new_figure(len(suites), columns, figsize=(3.8 * columns, 3.4 * len(suites)))
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
    return save_figure(fig, png_path)


def _baselines(cell: dict[str, float]) -> str:
    return ", ".join(f"{name} {cell[name]:.2f}" for name in ("ce-target", "undistilled") if name in cell)
