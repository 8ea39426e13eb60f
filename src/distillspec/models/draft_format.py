"""The draft's number format chosen by timing it on the CPU in use (`@auto`).

Why: which format makes a draft cheapest depends on the CPU. On an AVX2-only EPYC fbgemm's
w8a8 was the fastest draft; on an Intel Xeon with AMX bf16 passes are cheap and fbgemm's
int8 does not use AMX, so the same fixed w8a8 default lost to HF assisted generation with a
plain bf16 draft. A table by CPU flag would guess;
this times a few decode steps of each candidate on the draft itself, once per CPU model,
and keeps the result in the cache folder (`cpu-choices.json`), so later loads only read it.

The rule prefers accuracy: candidates are ordered from the most to the least accurate
(bf16 as loaded, int8 weight-only, w8a8, by measured greedy agreement with bf16), and a
less accurate one is chosen only when its step is at least `MIN_GAIN` cheaper
than the best more accurate one.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_text_atomic
from ..cpu import cpu_info
from .gguf_convert import cache_root
from .quant import apply_quant, fbgemm_available, return_freed_memory

#: from most to least accurate
CANDIDATES = ("none", "int8", "w8a8")
#: a less accurate format must make a draft step at least this much cheaper to be chosen
MIN_GAIN = 0.15
#: one-token steps timed per candidate (the median is kept), after WARMUP_STEPS untimed ones
TIMED_STEPS = 7
WARMUP_STEPS = 2
#: tokens in the cache before the timed steps, as in a short prompt
CONTEXT_TOKENS = 48
CHOICES_FILE = "cpu-choices.json"


@dataclass(frozen=True)
class FormatChoice:
    """The chosen form (a QUANT_CHOICES name), why, and the step times it was chosen from."""

    quant: str
    reason: str
    step_ms: dict
    cpu: str
    cached: bool = False


def candidates() -> tuple[str, ...]:
    return tuple(c for c in CANDIDATES if c != "w8a8" or fbgemm_available())


def choice_key(model: nn.Module) -> str:
    """What the timing depends on: the CPU (model name and flags), torch, and the draft's shape."""
    name, flags = cpu_info()
    config = model.config
    dtype = next(model.parameters()).dtype
    shape = f"{type(model).__name__} h{config.hidden_size} l{config.num_hidden_layers} v{config.vocab_size} {dtype}"
    return f"{name} [{' '.join(flags)}] | torch {torch.__version__} | {shape} | threads {torch.get_num_threads()}"


@torch.inference_mode()
def step_milliseconds(model: nn.Module) -> float:
    """Median time of a one-token decode step with CONTEXT_TOKENS cached, in ms."""
    from transformers import DynamicCache

    ids = torch.arange(2, 2 + CONTEXT_TOKENS, device=next(model.parameters()).device)[None]
    cache = DynamicCache()
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    token = ids[:, -1:]
    times = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        model(input_ids=token, past_key_values=cache, use_cache=True)
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def pick(step_ms: dict) -> tuple[str, str]:
    """(form, reason) from measured step times, by the rule in the module docstring."""
    order = [c for c in CANDIDATES if c in step_ms]
    chosen = order[0]
    for form in order[1:]:
        if step_ms[form] <= (1 - MIN_GAIN) * step_ms[chosen]:
            chosen = form
    timings = ", ".join(f"{c} {step_ms[c]:.1f} ms" for c in order)
    if chosen == order[0]:
        reason = f"no quantized form was {MIN_GAIN:.0%} cheaper per draft step ({timings})"
    else:
        reason = f"the cheapest draft step by at least {MIN_GAIN:.0%} over more accurate forms ({timings})"
    return chosen, reason


def measure(model: nn.Module) -> dict:
    """Step time of each candidate form, on copies of `model` (which stays as it is)."""
    step_ms = {}
    for form in candidates():
        trial = model if form == "none" else apply_quant(copy.deepcopy(model), form)
        step_ms[form] = round(step_milliseconds(trial), 2)
        del trial
        return_freed_memory()
    return step_ms


def choose_draft_quant(model: nn.Module, folder: Path | None = None) -> FormatChoice:
    """The form `@auto` stands for on this CPU: read from the cache, or measured and cached."""
    path = Path(folder or cache_root()) / CHOICES_FILE
    key = choice_key(model)
    known = read_choices(path)
    cpu = cpu_info()[0]
    if key in known:
        quant, reason = pick(known[key])
        return FormatChoice(quant, reason, known[key], cpu, cached=True)
    step_ms = measure(model)
    write_choice(path, key, step_ms)
    quant, reason = pick(step_ms)
    return FormatChoice(quant, reason, step_ms, cpu)


def read_choices(path: Path) -> dict:
    """The cached timings; a missing or unreadable file is an empty cache (it is measured again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_choice(path: Path, key: str, step_ms: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_choices(path)
    data[key] = step_ms
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def describe(choice: FormatChoice) -> str:
    """One line for the output: what was chosen and why."""
    source = "cached timing" if choice.cached else "timed now"
    return f"draft format {choice.quant} on {choice.cpu}: {choice.reason}; {source}"


def as_dict(choice: FormatChoice) -> dict:
    return asdict(choice)
