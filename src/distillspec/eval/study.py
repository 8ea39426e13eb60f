"""`distillspec study`: the DistillSpec comparison grid at equal training budget.

Divergence x data source, each distilled from the same starting draft with the same
recipe and number of steps, then measured with the engine on held-out suites at one
gamma, greedy and sampled; the supervised baseline (cross-entropy on target-generated
text) and the undistilled draft beside them. Runs are resumable: a finished run is
reused, an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm.auto import tqdm

from ..data.suites import heldout_items, suite_label
from ..data.tokenize import pad_id_for
from ..distill.budget import run_budget
from ..distill.checkpoint import checkpoint_step, draft_from_checkpoint
from ..distill.config import DATA_SOURCES, OFF_POLICY_SOURCES, DistillConfig
from ..distill.divergences import DIVERGENCES
from ..distill.evaluate import heldout_expected_acceptance, sample_eval_text, score_text
from ..distill.trainer import distill
from ..engine.inputs import eos_ids_for
from ..errors import DistillSpecError
from ..models import load_drafter, load_model
from .plots import plot_study_grid
from .runs import evaluate_drafter

UNDISTILLED = "undistilled"
SUPERVISED = ("ce", "target")


def study_grid(divergences: list[str], data_sources: list[str], supervised: bool) -> list[tuple[str, str]]:
    """(divergence, data source) pairs to train, the supervised baseline last."""
    for name in divergences:
        if name not in DIVERGENCES:
            raise DistillSpecError(f"unknown divergence {name!r}; choose from {', '.join(DIVERGENCES)}")
    for name in data_sources:
        if name not in DATA_SOURCES:
            raise DistillSpecError(f"unknown data source {name!r}; choose from {', '.join(DATA_SOURCES)}")
    grid = [(d, s) for d in divergences for s in data_sources]
    return grid + [SUPERVISED] if supervised else grid


def run_config(base: DistillConfig, divergence: str, source: str, root: Path, steps: int) -> DistillConfig:
    """One grid cell's recipe. With a top-k teacher (`teacher_top_k`), off-policy runs of the
    same data source share one cache, so the target scores each example once for the whole
    grid; on-policy runs score fresh samples and keep no cache. The runs evaluate nothing
    themselves: the study measures every cell afterwards on the same held-out text (on the
    real pair, a run's own evaluation cost minutes per cell)."""
    cached = base.teacher_top_k and source in OFF_POLICY_SOURCES
    return dataclasses.replace(base, divergence=divergence, data_source=source, steps=steps,
                               out=str(root / f"{divergence}-{source}"),
                               eval_prompts=0, spec_eval_prompts=0,
                               teacher_top_k=base.teacher_top_k if cached else 0,
                               teacher_cache=str(root / f"teacher-cache-{source}") if cached else "").validate()


def trained_steps(steps: int, stop_at: int | None) -> int:
    """How far each cell trains: its schedule, or the `--stop-at` step short of it."""
    return steps if stop_at is None else min(stop_at, steps)


def finished(config: DistillConfig) -> bool:
    return (Path(config.out) / "draft" / "config.json").is_file()


def train_all(configs: list[DistillConfig], stop_at: int | None = None) -> None:
    """Distill every run that has not finished (resuming interrupted ones); with `stop_at`,
    only up to that step of each run's schedule."""
    for config in configs:
        out = Path(config.out)
        if finished(config) or (stop_at is not None and (checkpoint_step(out) or 0) >= stop_at):
            continue
        resume = (out / "checkpoint").is_dir()
        # a cell that never checkpointed has nothing to keep: it starts over
        distill(config, resume=resume, overwrite=not resume, stop_at=stop_at)


def measured_draft(config: DistillConfig, stop_at: int | None) -> str | None:
    """The draft spec a grid cell is measured with: its finished draft, or (`stop_at` short of
    the schedule) its step-`stop_at` snapshot, written from the checkpoint the first time.
    None when the cell has not reached that point, or went past it without a snapshot."""
    out = Path(config.out)
    if stop_at is None or stop_at >= config.steps:
        return str(out / "draft") if finished(config) else None
    snapshot = out / f"step-{stop_at}"
    if not snapshot.is_dir() and checkpoint_step(out) == stop_at:
        draft_from_checkpoint(out, config, snapshot)
    return str(snapshot) if snapshot.is_dir() else None


def evaluate_runs(base: DistillConfig, drafts: dict[str, str], suites: list[str], gamma: int,
                  temperatures: list[float], num_prompts: int, max_new_tokens: int,
                  dtype: str, engine_suites: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Per draft and held-out suite: alpha and tau from the engine (greedy and sampled, no
    timing), and expected acceptance / greedy agreement on the target's own sampled text
    (with the same on the draft's text as a collapse diagnostic). Returns (rows, text rows).

    engine_suites: the suites also run through the engine (default: all); the engine is
    the slow part, the text measure costs one forward pass per draft.
    """
    target, tokenizer = load_model(base.target, dtype=dtype)
    eos_ids = eos_ids_for(target, tokenizer.eos_token_id)
    pad_id = pad_id_for(tokenizer)
    items = {suite: heldout_items(suite, tokenizer, heldout_fraction=base.heldout_fraction, chat=base.chat,
                                  max_prompt_tokens=base.max_prompt_tokens, max_new_tokens=max_new_tokens,
                                  limit=num_prompts, suite=True) for suite in suites}
    # the target's text and its logits on it, once per suite: each draft then costs no target pass on it
    target_text = {suite: score_text(target, sample_eval_text(target, items[suite], max_new_tokens, eos_ids, pad_id,
                                                              base.seed))
                   for suite in suites}
    rows, text_rows = [], []
    jobs = [(name, spec, suite) for name, spec in drafts.items() for suite in suites]
    loaded = {}
    for name, spec, suite in tqdm(jobs, desc="study eval", unit="eval"):
        if name not in loaded:
            loaded = {name: load_drafter(spec, target, tokenizer)}  # one draft in memory at a time
        drafter = loaded[name]
        text_rows.append({"run": name, "suite": suite_label(suite), **heldout_expected_acceptance(
            target, drafter.model, items[suite], max_new_tokens, eos_ids, pad_id, base.seed, target_text[suite])})
        if engine_suites is not None and suite not in engine_suites:
            continue
        for temperature in temperatures:
            result = evaluate_drafter(target, drafter, items[suite], gamma=gamma, temperature=temperature,
                                      max_new_tokens=max_new_tokens, eos_ids=eos_ids, vocab_size=len(tokenizer),
                                      baseline=False)
            rows.append({"run": name, "suite": suite_label(suite), **result})
    return rows, text_rows


def _grid_table(title: str, cell, divergences: list[str], data_sources: list[str]) -> list[str]:
    """Divergence rows x data-source columns, then the two baselines; cell(run name) -> text."""
    return [title, "", "| divergence | " + " | ".join(data_sources) + " |", "|---" * (len(data_sources) + 1) + "|",
            *[f"| {d} | " + " | ".join(cell(f"{d}-{s}") for s in data_sources) + " |" for d in divergences], "",
            f"supervised (ce, target-generated): {cell('ce-target')}; undistilled: {cell(UNDISTILLED)}", ""]


def markdown_tables(rows: list[dict], divergences: list[str], data_sources: list[str]) -> str:
    """One table per suite and temperature: divergence rows, data-source columns, tau (alpha)."""
    out = []
    keys = sorted({(r["suite"], r["temperature"]) for r in rows})
    for suite, temperature in keys:
        cell = {r["run"]: r for r in rows if r["suite"] == suite and r["temperature"] == temperature}

        def fmt(name: str) -> str:
            r = cell.get(name)
            return "-" if r is None else f"{r['block_efficiency']:.2f} ({r['acceptance_rate']:.3f})"

        gamma = next(iter(cell.values()))["gamma"]
        out += _grid_table(f"### {suite}, T={temperature:g}: tau (alpha) at gamma={gamma}", fmt, divergences,
                           data_sources)
    return "\n".join(out)


def text_acceptance_tables(text_rows: list[dict], divergences: list[str], data_sources: list[str]) -> str:
    """Per suite: expected acceptance (1 - TVD, which predicts sampled alpha) and greedy
    agreement (which predicts greedy alpha) on held-out target text, then expected
    acceptance on the draft's own text (a collapse diagnostic)."""
    out = []
    for suite in sorted({r["suite"] for r in text_rows}):
        cell = {r["run"]: r for r in text_rows if r["suite"] == suite}

        def fmt(name: str) -> str:
            r = cell.get(name)
            return "-" if r is None else (f"{r['expected_acceptance']:.3f} / {r['greedy_agreement']:.3f} "
                                          f"({r['expected_acceptance_on_draft_text']:.3f})")

        out += _grid_table(f"### {suite}: expected acceptance / greedy agreement on target text "
                           "(expected acceptance on the draft's own text)", fmt, divergences, data_sources)
    return "\n".join(out)


def budget_table(budgets: dict[str, dict]) -> str:
    """What each measured run cost, read from its log: the 'equal budget' made checkable."""
    if not budgets:
        return ""
    lines = ["### What each run cost (from its log)", "", "| run | steps | sequences | loss tokens | hours | CPU |",
             "|---|---|---|---|---|---|"]
    for name, b in budgets.items():
        lines.append(f"| {name} | {b['steps']} | {b['sequences']} | {b['loss_tokens']:,} | {b['train_hours']:.2f} | "
                     f"{', '.join(b['cpus'])} |")
    return "\n".join(lines + [""])


def study_markdown(document: dict) -> str:
    divergences, sources = document["divergences"], document["data_sources"]
    base = document["base_recipe"]
    trained = trained_steps(document["steps"], document.get("stop_at"))
    schedule = "" if trained == document["steps"] else f" (of a {document['steps']}-step schedule)"
    budget = (f"{trained} steps{schedule} x batch {base['batch_size']} x grad_accum {base['grad_accum']} x "
              f"{base['max_new_tokens']} new tokens per run, lr {base['lr']}, draft {base['draft']}, "
              f"seed {base['seed']}; evaluated on {document['num_prompts']} held-out prompts x "
              f"{document['max_new_tokens']} new tokens per suite, {document['dtype']}.")
    return "\n".join([f"# DistillSpec study: {trained} steps per run", "", f"Budget: {budget}", "",
                      budget_table(document.get("budgets", {})),
                      markdown_tables(document["rows"], divergences, sources),
                      text_acceptance_tables(document.get("text_acceptance", []), divergences, sources),
                      "![tau grid](study.png)", ""])


def write_study(document: dict, out: Path) -> str:
    """study.json, study.md and study.png in out; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(document, indent=1))
    text = study_markdown(document)
    (out / "study.md").write_text(text)
    plot_study_grid(document, out / "study.png")
    return text


def grid_configs(base: DistillConfig, steps: int, divergences: list[str], data_sources: list[str],
                 supervised: bool, runs: Path) -> list[DistillConfig]:
    """Every grid cell's recipe, in training order (the supervised baseline last)."""
    return [run_config(base, d, s, Path(runs), steps) for d, s in study_grid(divergences, data_sources, supervised)]


def train_grid(base: DistillConfig, *, steps: int, divergences: list[str], data_sources: list[str],
               supervised: bool, runs: Path, stop_at: int | None = None) -> None:
    """Train (or continue) the grid's runs without measuring them: lets a long grid be
    trained cell group by cell group, in the order that matters most, and measured once."""
    train_all(grid_configs(base, steps, divergences, data_sources, supervised, runs), stop_at)


def run_study(base: DistillConfig, *, steps: int, divergences: list[str], data_sources: list[str], supervised: bool,
              runs: Path, out: Path, suites: list[str], engine_suites: list[str] | None, gamma: int,
              temperatures: list[float], num_prompts: int, max_new_tokens: int, dtype: str,
              train: bool = True, stop_at: int | None = None) -> str:
    """Train the grid (resuming what exists), evaluate every run, write the report; returns its markdown.

    stop_at: compare the runs at this step of their `steps`-long schedule (equal budget in
    sittings: a later call with a larger stop_at continues the same runs).
    """
    stray = [s for s in engine_suites or [] if s not in suites]
    if stray:
        raise DistillSpecError(f"--engine-suites {stray[0]!r} is not one of --suites ({', '.join(suites)})")
    configs = grid_configs(base, steps, divergences, data_sources, supervised, runs)
    if train:
        train_all(configs, stop_at)
    drafts = {UNDISTILLED: base.draft}
    for config in configs:
        spec = measured_draft(config, stop_at)
        if spec is not None:
            drafts[Path(config.out).name] = spec
    rows, text_rows = evaluate_runs(base, drafts, suites, gamma, temperatures, num_prompts, max_new_tokens, dtype,
                                    engine_suites)
    budgets = {Path(c.out).name: run_budget(Path(c.out) / "log.jsonl", up_to_step=trained_steps(steps, stop_at))
               for c in configs if Path(c.out).name in drafts}
    document = {"base_recipe": base.to_dict(), "steps": steps, "stop_at": stop_at, "gamma": gamma,
                "budgets": budgets,
                "divergences": divergences, "data_sources": data_sources,
                "engine_suites": suites if engine_suites is None else engine_suites,
                "num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "dtype": dtype,
                "text_acceptance": text_rows, "rows": rows}
    return write_study(document, Path(out))


def rewrite_report(out: Path) -> str:
    """Rewrite study.md and study.png from the study.json in `out`."""
    out = Path(out)
    if not (out / "study.json").is_file():
        raise DistillSpecError(f"--report-only needs {out / 'study.json'}; run the study first")
    return write_study(json.loads((out / "study.json").read_text()), out)
