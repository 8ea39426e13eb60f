"""The benchmark's outputs: a markdown table, where the best configuration stands against
its peers, PNG plots, JSON on disk.

All of it is computed from the report document alone (`run.run_bench`'s result), so a
saved JSON can be re-rendered without rerunning anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .environment import environment_line
from .plots import new_figure, save_figure

COLUMNS = [
    ("config", "label", "{}"), ("T", "temperature", "{:g}"), ("alpha", "acceptance_rate", "{:.3f}"),
    ("tau", "block_efficiency", "{:.2f}"), ("c", "cost_ratio", "{:.3f}"), ("v", "verify_ratio", "{:.2f}"),
    ("expected", "expected_speedup", "{:.2f}x"), ("predicted", "predicted_speedup", "{:.2f}x"),
    ("speedup", "speedup", "{:.2f}x"), ("decode speedup", "decode_speedup", "{:.2f}x"),
    ("x llama.cpp", "vs_llama_plain", "{:.2f}x"),
    ("tok/s", "tokens_per_second", "{:.1f}"),
    ("TTFT ms", "time_to_first_token", "{:.0f}"), ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("same", "same_tokens_fraction", "{:.2f}"), ("target NLL", "target_nll", "{:.3f}"),
    ("accuracy", "answer_accuracy", "{:.2f}"),
]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "time_to_first_token":
        value = value * 1000
    return fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([header, rule, *body])


#: the rows that are a peer's way of speculating, by backend: llama.cpp's own, or Hugging Face's
PEER_METHODS = ("llama-speculative", "hf-assisted", "hf-prompt-lookup")


def standing(document: dict) -> list[dict]:
    """Per suite, where our fastest greedy speculative row stands: its speed over the
    reference (llama.cpp's plain decode where measured, else our target alone) and over the
    fastest peer row (llama.cpp's own speculative decoding at its best n-max, or HF's
    assisted generation with the same draft at its best gamma), so a peer is never judged
    by a setting it does badly with."""
    out = []
    for suite in document["suites"]:
        rows = [r for r in suite["rows"] if r["temperature"] == 0 and r["tokens_per_second"]]
        ours = [r for r in rows if r["method"] == "speculative"]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["tokens_per_second"])
        reference = next((r for r in rows if r["method"] == "llama-plain"), None) or \
            next((r for r in rows if r["method"] == "target"), None)
        peers = [r for r in rows if r["method"] in PEER_METHODS
                 and (r["method"] == "llama-speculative" or r["draft"] == best["draft"])]
        peer = max(peers, key=lambda r: r["tokens_per_second"]) if peers else None
        out.append({
            "suite": suite["suite"], "best": best["label"], "tokens_per_second": best["tokens_per_second"],
            "reference": reference["label"] if reference else None,
            "over_reference": best["tokens_per_second"] / reference["tokens_per_second"] if reference else None,
            "peer": peer["label"] if peer else None,
            "over_peer": best["tokens_per_second"] / peer["tokens_per_second"] if peer else None,
        })
    return out


def _engine(settings: dict) -> str:
    if settings.get("backend") == "llama.cpp":
        return f"llama.cpp, GGUF as published, {settings['device']}"
    return f"torch {settings['dtype']}, {settings['device']}"


def markdown_report(document: dict) -> str:
    settings = document["settings"]
    env = document["environment"]
    lines = [
        f"# distillspec bench: {settings['target']} ({_engine(settings)})",
        "",
        f"{environment_line(env)}. "
        f"{settings['num_prompts']} prompts per suite, {settings['max_new_tokens']} new tokens, median of "
        f"{settings['repeats']} repeats, warm-up excluded. speedup: wall-clock per token against our target-alone "
        "loop in the same run, prompt prefill included; decode speedup: the same after each prompt's first step "
        "(prefills of target and draft excluded, so it does not depend on reply length); expected = tau/(1+gamma*c); predicted = tau/(gamma*c+v), v = verification pass "
        "time in target decode steps; c = draft time per drafted token in target decode steps (prefill excluded).",
    ]
    if settings.get("backend") == "llama.cpp":
        lines += ["", "x llama.cpp: tokens/s over llama.cpp's plain decode (llama-cpp-python `Llama.generate`) in the "
                  "same run. llama-speculative rows: llama.cpp's own `llama-speculative-simple` with the same GGUF "
                  "target and draft, n-max = g (for prompt lookup: its own n-gram lookup, `--spec-type "
                  "ngram-simple` at its default sizes, no draft model; for prompt-lookup+SPEC: both, "
                  "`--spec-type ngram-simple,draft-simple`); its time is its prompt encoding plus "
                  "decoding as it reports them; its reply is counted as ours (cut at the token limit, its "
                  "unprinted end token counted)."]
        if "llama_tools" in settings and settings["llama_tools"] is None:  # resolve_backend found none
            lines.append("llama.cpp's own speculative rows are left out: `llama-speculative-simple` was not found "
                         "(build it with `make bench-tools`).")
        for role, path in document.get("files", {}).items():
            lines.append(f"- {role}: `{path}`")
    if document.get("command"):
        lines += ["", f"Command: `{document['command']}`"]
    for spec, resolved in document.get("paired_drafts", {}).items():
        lines += ["", f"Draft `{spec}` is the target's paired draft: `{resolved}`."]
    if settings.get("stop"):
        lines += ["", "Stop strings: " + ", ".join(repr(s) for s in settings["stop"]) + ". Every output ends at "
                  "its first stop string; HF outputs are cut there too (its assisted loop checks stops only at "
                  "the end of a block), and the time it spent on the tokens past the stop counts."]
    if not document.get("complete", True):
        last = document["suites"][-1] if document["suites"] else None
        lines += ["", "**Partial report** (the bench was interrupted or is still running)" + (
            f": {last['suite']} measured on {last['prompts']} of {last['planned_prompts']} prompts." if last else ".")]
    for suite in document["suites"]:
        lines += ["", f"## {suite['suite']} ({suite['prompts']} prompts)", "", markdown_table(suite["rows"])]
        if suite.get("accuracy"):
            lines += ["", f"accuracy: {suite['accuracy']}."]
        past = [f"{r['label']} (T={r['temperature']:g}): {r['tokens_past_stop']}" for r in suite["rows"]
                if r.get("tokens_past_stop")]
        if past:
            lines += ["", "tokens made past a stop string and cut off: " + "; ".join(past) + "."]
    if document.get("standing"):
        lines += ["", "## Standing (greedy: the fastest of our rows against the reference and the fastest peer)", ""]
        for entry in document["standing"]:
            line = f"- {entry['suite']}: {entry['best']} at {entry['tokens_per_second']:.1f} tok/s"
            if entry["over_reference"] is not None:
                line += f", {entry['over_reference']:.2f}x {entry['reference']}"
            if entry["over_peer"] is not None:
                line += f", {entry['over_peer']:.2f}x {entry['peer']}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_outputs(document: dict, folder: Path) -> dict[str, Path]:
    """bench.json, bench.md and the plots into `folder`; returns what was written."""
    written = write_tables(document, folder)
    written.update(write_plots(document, folder))
    return written


def write_tables(document: dict, folder: Path) -> dict[str, Path]:
    """bench.json and bench.md, each replaced atomically: a bench killed while writing
    leaves the previous round's files whole (this runs after every prompt round)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"json": folder / "bench.json", "markdown": folder / "bench.md"}
    for path, text in ((written["json"], json.dumps(document, indent=1)),
                       (written["markdown"], markdown_report(document))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    return written


def write_plots(document: dict, folder: Path) -> dict[str, Path]:
    """speedup and tau against gamma per draft, acceptance per draft position, lossy trade-off."""
    out = {}
    for suite in document["suites"]:
        rows, name = suite["rows"], suite["suite"]
        temperatures = sorted({r["temperature"] for r in rows})
        fig, axes = new_figure(len(temperatures), 2, figsize=(11, 3.6 * len(temperatures)))
        for (left, right), temperature in zip(axes, temperatures):
            _gamma_curves(left, right, [r for r in rows if r["temperature"] == temperature], temperature)
        out[f"gamma_{name}"] = save_figure(fig, folder / f"gamma-{name}.png")
        lossy = _lossy_rows(rows)
        if lossy:
            scored = any(r.get("answer_accuracy") is not None for r in lossy)
            fig, axes = new_figure(1, 2 if scored else 1, figsize=(11 if scored else 6, 4))
            target = [r for r in rows if r["method"] == "target" and r["temperature"] in {x["temperature"] for x in lossy}]
            _lossy_tradeoff(axes[0][0], lossy, target[0] if target else None, "target_nll",
                            "target NLL per token (lower: closer to target)")
            if scored:
                _lossy_tradeoff(axes[0][1], lossy, target[0] if target else None, "answer_accuracy",
                                "accuracy (higher is better)")
            out[f"lossy_{name}"] = save_figure(fig, folder / f"lossy-{name}.png")
        fig, axes = new_figure()
        if _position_curves(axes[0][0], rows):
            out[f"positions_{name}"] = save_figure(fig, folder / f"positions-{name}.png")
    return out


def _gamma_curves(left, right, rows: list[dict], temperature: float) -> None:
    fixed = [r for r in rows if r["gamma"] is not None and not r["adaptive"] and r.get("lenience") is None]
    for method in ("speculative", "hf-assisted", "hf-prompt-lookup"):
        for draft in sorted({r["draft"] for r in fixed if r["method"] == method}):
            points = sorted(((r["gamma"], r) for r in fixed if r["method"] == method and r["draft"] == draft),
                            key=lambda point: point[0])
            gammas = [g for g, _ in points]
            name = f"{'ours' if method == 'speculative' else method} {draft}"
            style = "-o" if method == "speculative" else "--x"
            left.plot(gammas, [r["speedup"] for _, r in points], style, label=name)
            if method == "speculative":
                right.plot(gammas, [r["block_efficiency"] for _, r in points], style, label=name)
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xlabel="gamma", ylabel="speedup over target alone", title=f"speedup, T={temperature:g}")
    right.set(xlabel="gamma", ylabel="block efficiency tau", title=f"tau, T={temperature:g}")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=7)


def _position_curves(ax, rows: list[dict]) -> bool:
    drew = False
    for r in rows:
        if (r["method"] == "speculative" and r["per_position_acceptance"] and not r["adaptive"]
                and r.get("lenience") is None):
            values = r["per_position_acceptance"]
            if len(values) > 1:
                ax.plot(range(1, len(values) + 1), [v if v is not None else float("nan") for v in values],
                        "-o", label=f"{r['draft']} g{r['gamma']} T={r['temperature']:g}")
                drew = True
    ax.set(xlabel="draft position", ylabel="P(accepted | drafted)", ylim=(0, 1), title="acceptance per position")
    if drew:
        ax.legend(fontsize=7)
    return drew


def _lossy_rows(rows: list[dict]) -> list[dict]:
    """Sampled speculative rows at the gammas and drafts that have lossy variants, exact included."""
    lossy = [r for r in rows if r.get("lenience") is not None and r.get("target_nll") is not None]
    keys = {(r["draft"], r["gamma"], r["temperature"]) for r in lossy}
    exact = [r for r in rows if r["method"] == "speculative" and r.get("lenience") is None and not r["adaptive"]
             and (r["draft"], r["gamma"], r["temperature"]) in keys and r.get("target_nll") is not None]
    return exact + lossy


def _lossy_tradeoff(ax, rows: list[dict], target: dict | None, key: str, label: str) -> None:
    """Quality (`key`: the output's NLL under the target, or answer accuracy) against speedup,
    one line per draft and lenience function; the target alone as a dashed line."""
    if target is not None and target.get(key) is not None:
        ax.axhline(target[key], color="grey", ls="--", lw=0.8, label="target alone")
    for draft in sorted({r["draft"] for r in rows}):
        exact = [r for r in rows if r.get("lenience") is None and r["draft"] == draft]
        lossy = [r for r in rows if r.get("lenience") is not None and r["draft"] == draft]
        for function in sorted({r["lenience_function"] for r in lossy}):
            points = exact + sorted((r for r in lossy if r["lenience_function"] == function),
                                    key=lambda r: -r["lenience"])
            points = [r for r in points if r.get(key) is not None]
            name = function if len({r["draft"] for r in rows}) == 1 else f"{draft} {function}"
            ax.plot([r["speedup"] for r in points], [r[key] for r in points], "-o", label=name[:50])
            for r in points:
                ax.annotate("exact" if r.get("lenience") is None else f"eps={r['lenience']:g}",
                            (r["speedup"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="speedup over target alone", ylabel=label, title="lossy decoding: quality against speed")
    if ax.lines:
        ax.legend(fontsize=7)


def write_report(document: dict, path: Path) -> Path:
    """The markdown report alone at `path` (replaced whole, atomically)."""
    from ..atomic import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, markdown_report(document))
    return path
