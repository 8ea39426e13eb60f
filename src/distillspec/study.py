"""`distillspec study`: the DistillSpec comparison grid at equal training budget.

Divergence x data source, each distilled from the same starting draft with the same
recipe and number of steps, then measured with the engine on held-out suites at one
gamma, greedy and sampled; the supervised baseline (cross-entropy on target-generated
text) and the undistilled draft beside them. Runs are resumable: a finished run is
reused, an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .distill.config import DATA_SOURCES, DistillConfig
from .distill.divergences import DIVERGENCES
from .errors import DistillSpecError

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
    return dataclasses.replace(base, divergence=divergence, data_source=source, steps=steps,
                               out=str(root / f"{divergence}-{source}"),
                               eval_every=max(steps, base.eval_every)).validate()


def train_all(configs: list[DistillConfig]) -> None:
    """Distill every run that has not finished (resuming interrupted ones)."""
    from .distill.trainer import distill

    for config in configs:
        out = Path(config.out)
        if (out / "draft" / "config.json").is_file():
            continue
        distill(config, resume=(out / "checkpoint").is_dir())


def evaluate_runs(base: DistillConfig, drafts: dict[str, str], suites: list[str], gamma: int,
                  temperatures: list[float], num_prompts: int, max_new_tokens: int, dtype: str) -> list[dict]:
    """alpha and tau of each draft on each held-out suite (the engine, no timing)."""
    from tqdm.auto import tqdm

    from .bench.suites import suite_examples
    from .decoding import eos_ids_for
    from .distill.report import evaluate_drafter
    from .distill.steps import tokenize_examples
    from .drafters import load_drafter
    from .models import load_model

    target, tokenizer = load_model(base.target, dtype=dtype)
    eos_ids = eos_ids_for(target, tokenizer.eos_token_id)
    items = {suite: tokenize_examples(tokenizer, suite_examples(suite, base.heldout_fraction), base.chat,
                                      base.max_prompt_tokens, max_new_tokens)[:num_prompts] for suite in suites}
    rows = []
    jobs = [(name, spec, suite, t) for name, spec in drafts.items() for suite in suites for t in temperatures]
    loaded = {}
    for name, spec, suite, temperature in tqdm(jobs, desc="study eval", unit="eval"):
        if name not in loaded:
            loaded = {name: load_drafter(spec, target, tokenizer)}  # one draft in memory at a time
        result = evaluate_drafter(target, loaded[name], items[suite], gamma=gamma, temperature=temperature,
                                  max_new_tokens=max_new_tokens, eos_ids=eos_ids, vocab_size=len(tokenizer),
                                  baseline=False)
        rows.append({"run": name, "suite": suite, **result})
    return rows


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
        out += [f"### {suite}, T={temperature:g}: tau (alpha) at gamma={gamma}", "",
                "| divergence | " + " | ".join(data_sources) + " |", "|---" * (len(data_sources) + 1) + "|"]
        out += [f"| {d} | " + " | ".join(fmt(f"{d}-{s}") for s in data_sources) + " |" for d in divergences]
        out += ["", f"supervised (ce, target-generated): {fmt('ce-target')}; undistilled: {fmt(UNDISTILLED)}", ""]
    return "\n".join(out)


def add_study_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="the DistillSpec grid: divergence x data source at equal budget, measured on held-out suites",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="recipes/study-base.json", help="base recipe (JSON, as for distill)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the recipe's)")
    p.add_argument("--divergences", default="fkl,rkl,jsd,tvd")
    p.add_argument("--data-sources", default="fixed,target,draft,mixed")
    p.add_argument("--no-supervised", action="store_true", help="skip the cross-entropy baseline")
    p.add_argument("--runs", default="runs/study", help="folder of the distillation runs")
    p.add_argument("--out", default="docs/study", help="folder for study.json and study.md")
    p.add_argument("--suites", default="chat,code")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--dtype", default="float32", help="dtype of the evaluation (acceptance, not speed)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the runs that exist; train nothing")
    p.set_defaults(func=run_study)


def run_study(args) -> int:
    base = DistillConfig.from_file(args.config).validate()
    divergences = [d for d in args.divergences.split(",") if d]
    sources = [s for s in args.data_sources.split(",") if s]
    steps = args.steps or base.steps
    root = Path(args.runs)
    configs = [run_config(base, d, s, root, steps) for d, s in study_grid(divergences, sources, not args.no_supervised)]
    if not args.eval_only:
        train_all(configs)
    drafts = {UNDISTILLED: base.draft}
    drafts.update({Path(c.out).name: str(Path(c.out) / "draft") for c in configs
                   if (Path(c.out) / "draft" / "config.json").is_file()})
    temperatures = [float(t) for t in args.temperatures.split(",")]
    rows = evaluate_runs(base, drafts, args.suites.split(","), args.gamma, temperatures, args.num_prompts,
                         args.max_new_tokens, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"base_recipe": base.to_dict(), "steps": steps, "gamma": args.gamma, "rows": rows}
    (out / "study.json").write_text(json.dumps(document, indent=1))
    text = markdown_tables(rows, divergences, sources)
    (out / "study.md").write_text(f"# DistillSpec study: {steps} steps per run\n\n{text}")
    print(text)
    return 0
