"""Running a benchmark: load once, warm every configuration up, then measure them
interleaved prompt by prompt so that drift in machine speed touches all alike."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tqdm.auto import tqdm

from .. import metrics
from ..data.sources import training_texts
from ..data.suites import check_suite, heldout_items, suite_label
from ..data.tokenize import pad_id_for
from ..engine import Lenience, ModelDrafter, StopStrings
from ..engine.drafters import model_drafter_of
from ..engine.stops import check_stop_strings
from ..choices import BACKEND_CHOICES, DRAFT_QUANT_CHOICES, TARGET_QUANT_CHOICES
from ..engine.gamma import ADAPTIVE_GAMMA_CHOICES, DEFAULT_GAMMA, resolve_adaptive
from ..engine.inputs import eos_ids_for
from ..errors import DistillSpecError
from ..models import load_drafter, load_model, prepare_pair, resolve_paired_draft
from ..models.layout import apply_layout
from ..models.drafts import format_note
from ..models.quant import check_quant
from .environment import environment
from .memory import PeakRSS, rss_mib
from .code_tests import pass_at_1
from .quality import answer_accuracy, scorable_indices
from .report import standing
from .runners import BenchConfig, Models, make_runner
from .tally import Tally, make_row

SCHEMA = "distillspec.bench/1"
#: what `bench` measures when no --draft is given: the draft model, lookup alone, and both
#: (generate's and serve's default drafter)
DEFAULT_BENCH_DRAFTS = ("default", "prompt-lookup", "prompt-lookup+default")
ADAPTIVE_POLICIES = ADAPTIVE_GAMMA_CHOICES + ("auto",)  # auto: each draft's as generate's --adaptive-gamma auto


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on (written into its JSON report)."""

    target: str = "default"
    drafts: list[str] = field(default_factory=lambda: list(DEFAULT_BENCH_DRAFTS))
    suites: list[str] = field(default_factory=lambda: ["chat"])
    gammas: list[int] = field(default_factory=lambda: [1, 2, 4])
    adaptive: list[str] = field(default_factory=lambda: ["cost-model"])
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    lenience: list[float] = field(default_factory=list)  # lossy epsilons < 1, sampled rows only
    lenience_functions: list[str] = field(default_factory=lambda: ["linear"])
    num_prompts: int = 8
    max_new_tokens: int = 64
    repeats: int = 3
    dtype: str = "bfloat16"
    device: str = "cpu"
    draft_quant: str = "none"
    target_quant: str = "none"
    linear_layout: str = "auto"
    chat: bool = True
    hf_baselines: bool = True
    heldout_fraction: float = 0.1
    max_prompt_tokens: int = 256
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings of every row (none: run to max_new_tokens)
    backend: str = "auto"  # auto, torch or llama.cpp (models.backend_choice); the report records what ran
    llama_tools: str | None = None  # folder of llama.cpp's own tools (None: the cache's build, if any)

    def validate(self) -> "BenchSettings":
        if not self.drafts and not self.hf_baselines:
            raise DistillSpecError("nothing to compare: give at least one draft or keep the HF baselines")
        for name, values in (("temperatures", self.temperatures), ("suites", self.suites)):
            if not values:
                raise DistillSpecError(f"{name} is empty")
        if not self.gammas and not self.adaptive:
            raise DistillSpecError("give a fixed gamma (gammas) or an adaptive policy: with neither no draft is measured")
        if any(g < 1 for g in self.gammas):
            raise DistillSpecError(f"every gamma must be >= 1, got {self.gammas}")
        if any(t < 0 for t in self.temperatures):
            raise DistillSpecError(f"temperatures must be >= 0, got {self.temperatures}")
        for epsilon in self.lenience:
            for function in self.lenience_functions:
                Lenience(epsilon, function)  # raises a clear error for a bad value
        unknown = [a for a in self.adaptive if a not in ADAPTIVE_POLICIES]
        if unknown:
            raise DistillSpecError(f"unknown adaptive gamma policy {unknown[0]!r}; known: {', '.join(ADAPTIVE_POLICIES)}")
        for suite in self.suites:
            check_suite(suite)
        if self.stop:
            check_stop_strings(self.stop)
        if self.draft_quant not in DRAFT_QUANT_CHOICES:
            raise DistillSpecError(f"unknown draft quantization {self.draft_quant!r}; choose one of "
                                   f"{', '.join(DRAFT_QUANT_CHOICES)}")
        if self.draft_quant != "auto":
            check_quant(self.draft_quant)
        check_quant(self.target_quant, TARGET_QUANT_CHOICES, "target")
        if self.backend not in BACKEND_CHOICES:
            raise DistillSpecError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
        for name in ("num_prompts", "max_new_tokens", "repeats", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise DistillSpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


def bench_configs(settings: BenchSettings, model_drafts: set[str]) -> list[BenchConfig]:
    """Every configuration to measure, the target alone first (the others' reference).

    On the llama.cpp backend the peers are llama.cpp's own plain decode and speculative
    decoding (with each model draft, n-max = each gamma; for prompt lookup, its own n-gram
    lookup with its default sizes; for lookup before a model, both); on torch, Hugging Face's
    generate.
    """
    on_llamacpp = settings.backend == "llama.cpp"
    hf = settings.hf_baselines and not on_llamacpp
    start = max(settings.gammas) if settings.gammas else DEFAULT_GAMMA  # adaptive rows' first gamma
    configs = []
    for temperature in settings.temperatures:
        configs.append(BenchConfig("target", temperature))
        if on_llamacpp:
            configs.append(BenchConfig("llama-plain", temperature))
        if hf:
            configs.append(BenchConfig("hf-target", temperature))
        for draft in settings.drafts:
            for gamma in settings.gammas:
                configs.append(BenchConfig("speculative", temperature, draft, gamma))
                if hf and draft in model_drafts:
                    configs.append(BenchConfig("hf-assisted", temperature, draft, gamma))
                elif hf and draft == "prompt-lookup":
                    configs.append(BenchConfig("hf-prompt-lookup", temperature, draft, gamma))
                elif on_llamacpp and settings.llama_tools is not None and draft in model_drafts:
                    configs.append(BenchConfig("llama-speculative", temperature, draft, gamma))
            if on_llamacpp and settings.llama_tools is not None and draft == "prompt-lookup":
                configs.append(BenchConfig("llama-speculative", temperature, draft))  # its n-gram lookup, its defaults
            policies = dict.fromkeys(resolve_adaptive(policy, draft == "prompt-lookup") for policy in settings.adaptive)
            configs.extend(BenchConfig("speculative", temperature, draft, start, policy) for policy in policies)
            if hf and draft in model_drafts:
                configs.append(BenchConfig("hf-assisted", temperature, draft))  # HF's own defaults
            if temperature > 0 and draft != "prompt-lookup":  # greedy lossy equals lossless; lookup has no probs
                configs.extend(BenchConfig("speculative", temperature, draft, start, None, epsilon, function)
                               for function in settings.lenience_functions for epsilon in settings.lenience)
    return configs


def resolve_backend(settings: BenchSettings) -> BenchSettings:
    """Settings with 'auto' replaced by the backend that runs (models.backend_choice) and, on
    llama.cpp, the folder of llama.cpp's tools found (None: its own speculative rows are left out)."""
    from ..models.backend_choice import choose_backend
    from .llama_runners import llama_tools_folder

    drafts = [d for d in settings.drafts if d != "prompt-lookup"]
    backend, _ = choose_backend(settings.backend, settings.target, drafts, device=settings.device,
                                target_quant=settings.target_quant, draft_quant=settings.draft_quant,
                                linear_layout=settings.linear_layout)
    tools = None
    if backend == "llama.cpp":
        found = llama_tools_folder(settings.llama_tools)
        tools = None if found is None else str(found)
    return dataclasses.replace(settings, backend=backend, llama_tools=tools)


def load_bench_models(settings: BenchSettings, target=None, tokenizer=None) -> tuple[Models, dict, object]:
    """The target and every draft, loaded once; returns them, the RSS each one added and
    the tokenizer. A caller may pass an already loaded target with its tokenizer."""
    if (target is None) != (tokenizer is None):
        raise DistillSpecError("give both a loaded target and its tokenizer, or neither")
    on_llamacpp = settings.backend == "llama.cpp"
    if target is None and not on_llamacpp:
        prepare_pair(settings.target, list(settings.drafts))
    gc.collect()
    before = rss_mib()
    if target is None and on_llamacpp:
        from ..models.llamacpp_models import load_llamacpp_model

        target, tokenizer = load_llamacpp_model(settings.target)
    elif target is None:
        target, tokenizer = load_model(settings.target, dtype=settings.dtype, device=settings.device,
                                       quant=settings.target_quant)
        apply_layout(target, settings.linear_layout)
    memory = {"before_models_mib": before, "target_mib": rss_mib() - before, "draft_mib": {}}
    drafters, peer_drafts = {}, {}
    for spec in settings.drafts:
        gc.collect()
        start = rss_mib()
        drafter = load_drafter(spec, target, tokenizer, quant=None if spec == "prompt-lookup" else settings.draft_quant,
                               head_texts=training_texts)
        drafters[spec] = drafter
        if not on_llamacpp and (model_drafter := model_drafter_of(drafter)) is not None:
            apply_layout(model_drafter.model, settings.linear_layout)  # llama.cpp multiplies as ggml does
        # the peers (HF assisted, llama.cpp's own) take no truncated heads; lookup before a model only
        # llama.cpp's own (its n-gram lookup and the draft in one list of speculation types)
        peer = model_drafter_of(drafter) if on_llamacpp or isinstance(drafter, ModelDrafter) else None
        if peer is not None and peer.head_token_ids is None and getattr(peer.model, "vocab_map", None) is None:
            peer_drafts[spec] = peer.model
        memory["draft_mib"][spec] = rss_mib() - start
    eos_ids = sorted(eos_ids_for(target, tokenizer.eos_token_id))
    pad_id = pad_id_for(tokenizer)
    stop = StopStrings(settings.stop, tokenizer.decode) if settings.stop else None
    models = Models(target, drafters, peer_drafts, eos_ids, pad_id, len(tokenizer), stop, tokenizer,
                    llama_tools=Path(settings.llama_tools) if settings.llama_tools else None,
                    cost_priors=_cost_priors(drafters, target) if {"cost-model", "auto"} & set(settings.adaptive) else {})
    return models, memory, tokenizer


def _paired_drafts(specs: list[str], target) -> dict[str, str]:
    """The draft specs that stand for a paired draft ('default'), with the spec each became."""
    resolved = {spec: resolve_paired_draft(spec, target) for spec in specs}
    return {spec: became for spec, became in resolved.items() if became != spec}


def run_bench(settings: BenchSettings, target=None, tokenizer=None, progress: bool = True,
              on_update: Callable[[dict], None] | None = None) -> dict:
    """Measure every configuration on every suite; returns the report document (JSON-able).

    on_update: called with the report so far after every prompt round (each configuration
    measured on one more prompt), so that a caller can save it and an interrupted long
    bench keeps every round it finished. Those documents have "complete": false.
    """
    settings = resolve_backend(settings.validate())
    models, memory, tokenizer = load_bench_models(settings, target, tokenizer)
    configs = bench_configs(settings, set(models.peer_drafts))
    header = {"schema": SCHEMA, "environment": environment(), "settings": dataclasses.asdict(settings),
              "memory": memory,
              "hf_assistant_defaults": {} if settings.backend == "llama.cpp" else _assistant_defaults(models),
              "files": _model_files(models),
              "pass_costs": {spec: dataclasses.asdict(p) for spec, p in (models.cost_priors or {}).items()},
              "paired_drafts": _paired_drafts(settings.drafts, models.target),
              "draft_formats": {spec: note for spec, drafter in models.drafters.items()
                                if (note := format_note(model_drafter_of(drafter))) is not None}}
    suites = []
    context = SuiteContext(settings, tokenizer, memory, models.eos_ids)

    def report(current: list[dict], complete: bool) -> dict:
        document = {**header, "complete": complete, "suites": current}
        document["standing"] = standing(document)
        return document

    for suite in settings.suites:
        examples, prompts = _suite_prompts(suite, settings, tokenizer)

        def after_round(tallies: dict, done: int, suite=suite, examples=examples) -> None:
            if on_update is not None:
                partial = _suite_report(suite, examples[:done], tallies, len(examples), context)
                on_update(report(suites + [partial], complete=False))

        tallies = _measure_suite(configs, models, prompts, settings, progress, suite_label(suite), after_round)
        suites.append(_suite_report(suite, examples, tallies, len(examples), context))
    return report(suites, complete=True)


@dataclass
class SuiteContext:
    """What every suite's report is built with, the same for all suites of one run: the
    settings, the tokenizer that decodes the outputs, the models' memory, the target's end
    tokens (a reply closed by any of them is complete) and the code-test verdicts by program
    (`checked`: every round's partial report reuses them instead of running the tests again)."""

    settings: BenchSettings
    tokenizer: object
    memory: dict
    end_ids: Sequence[int] = ()
    checked: dict = field(default_factory=dict)


def _suite_report(suite: str, examples, tallies: dict, planned: int, context: SuiteContext) -> dict:
    """One suite's part of the report from its tallies, over the prompts measured so far
    (`examples`, the first of the `planned` ones)."""
    rows = _rows(tallies, context.settings, context.end_ids)
    by_label = {(c.label, c.temperature): t for c, t in tallies.items()}
    for row in rows:
        row["peak_rss_mib"] = _peak_rss(row, context.memory)
        # the texts themselves: accuracy is scored on them, and they can be read or re-scored
        row["outputs"] = [context.tokenizer.decode(ids, skip_special_tokens=True)
                          for ids in by_label[(row["label"], row["temperature"])].outputs]
    kind = accuracy_kind(examples)
    if kind is not None:
        _add_accuracy(rows, examples, kind, context.checked)
    return {"suite": suite_label(suite), "source": suite, "prompts": len(examples), "planned_prompts": planned,
            "rows": rows, "accuracy": ACCURACY_KINDS.get(kind)}


def _suite_prompts(suite: str, settings: BenchSettings, tokenizer):
    """The suite's first num_prompts examples that fit, and their prompt token ids."""
    items = heldout_items(suite, tokenizer, heldout_fraction=settings.heldout_fraction, chat=settings.chat,
                          max_prompt_tokens=settings.max_prompt_tokens, max_new_tokens=1,
                          limit=settings.num_prompts, suite=True)
    return [item.example for item in items], [item.prompt_ids for item in items]


#: what a suite's accuracy column measures, by accuracy_kind
ACCURACY_KINDS = {"tests": "share of outputs that pass the prompt's tests (pass@1)",
                  "answer": "share of outputs that state the numeric answer"}


def accuracy_kind(examples) -> str | None:
    """'tests' when every example carries tests (HumanEval), 'answer' when most have plain
    numeric answers (generated math), else None: the suite has no accuracy column."""
    if examples and all(e.tests for e in examples):
        return "tests"
    if len(scorable_indices([e.reference for e in examples])) * 2 >= len(examples):
        return "answer"
    return None


def _add_accuracy(rows: list[dict], examples, kind: str, checked: dict | None = None) -> None:
    """answer_accuracy per row, from its output texts: tests passed, or numeric answers over
    the examples that have one."""
    scored = range(len(examples)) if kind == "tests" else scorable_indices([e.reference for e in examples])
    prompts = [examples[i].prompt for i in scored]
    for row in rows:
        texts = [row["outputs"][i] for i in scored]
        if kind == "tests":
            row["answer_accuracy"] = pass_at_1(texts, prompts, [examples[i].tests for i in scored], checked=checked)
        else:
            row["answer_accuracy"] = answer_accuracy(texts, prompts, [examples[i].reference for i in scored])


def _measure_suite(configs, models: Models, prompts, settings: BenchSettings, progress: bool, label: str,
                   after_round: Callable[[dict, int], None] | None = None) -> dict:
    """Tallies of every configuration: warm-ups first, then prompt by prompt, every
    configuration on each prompt before the next (`after_round(tallies, prompts_done)`)."""
    runners = {c: make_runner(c, models, settings.max_new_tokens) for c in configs}
    tallies = {c: Tally(c) for c in configs}
    total = len(configs) * (1 + len(prompts) * settings.repeats)
    with tqdm(total=total, desc=f"bench {label}", disable=not progress, unit="run") as bar:
        for config, run in runners.items():  # warm-up on the first prompt, not timed; measures memory
            gc.collect()
            with PeakRSS() as peak:
                start = rss_mib()
                run(prompts[0], settings.seed)
            tallies[config].working_set_mib = max(0.0, peak.peak_mib - start)
            bar.update(1)
        for index, prompt in enumerate(prompts):
            for config, run in runners.items():
                repeats = [run(prompt, settings.seed + index) for _ in range(settings.repeats)]
                tallies[config].add_prompt(repeats)
                bar.update(settings.repeats)
                bar.set_postfix_str(config.label)
            if after_round is not None:
                after_round(tallies, index + 1)
    return tallies


def _rows(tallies: dict, settings: BenchSettings, end_ids: Sequence[int]) -> list[dict]:
    """Every configuration's row; on llama.cpp each also gets its speed over llama.cpp's
    plain decode at the same temperature (`vs_llama_plain`)."""
    rows = []
    for temperature in settings.temperatures:
        baseline = tallies[BenchConfig("target", temperature)]
        plain = tallies.get(BenchConfig("llama-plain", temperature))
        for config, tally in tallies.items():
            if config.temperature == temperature:
                row = make_row(tally, baseline, greedy=temperature == 0, end_ids=end_ids)
                row["vs_llama_plain"] = None if plain is None else metrics.speedup(plain.seconds_per_token,
                                                                                    tally.seconds_per_token)
                rows.append(row)
    return rows


def _cost_priors(drafters: dict, target) -> dict:
    """Each model draft's pass costs with the target, timed once per CPU and pair before any
    timed run (`models.pass_costs`; llama.cpp pairs only), so cost-model rows start from them
    as a user's calls do."""
    from ..models.pass_costs import pair_cost_prior

    priors = {}
    for spec, drafter in drafters.items():
        if (model_drafter := model_drafter_of(drafter)) is not None:
            prior, _ = pair_cost_prior(target, model_drafter.model)
            if prior is not None:
                priors[spec] = prior
    return priors


def _model_files(models: Models) -> dict:
    """The GGUF files the llama.cpp backend ran (empty on torch)."""
    from ..engine.backend import is_llamacpp

    if not is_llamacpp(models.target):
        return {}
    files = {"target": str(models.target.path)}
    for spec, drafter in models.drafters.items():
        if (model_drafter := model_drafter_of(drafter)) is not None:
            files[spec] = str(model_drafter.model.path)
    return files


def _assistant_defaults(models: Models) -> dict:
    """What HF assisted generation does with each draft when left to its defaults."""
    from transformers import GenerationConfig

    keys = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    global_defaults = getattr(GenerationConfig(), "_get_default_generation_params", dict)()  # unset -> these
    out = {}
    for spec, model in models.peer_drafts.items():
        values = {key: getattr(model.generation_config, key, None) for key in keys}
        out[spec] = {key: global_defaults.get(key) if value is None else value for key, value in values.items()}
    return out


def _peak_rss(row: dict, memory: dict) -> float:
    """Estimated peak RSS of a process holding the target (+ this row's draft) while generating."""
    draft = memory["draft_mib"].get(row["draft"], 0.0) if row["draft"] else 0.0
    return memory["before_models_mib"] + memory["target_mib"] + draft + row["working_set_mib"]
