"""A pair's pass costs on this machine, timed once and kept: where the cost model starts.

Why: the cost-model gamma learns the draft's cost c and the verification cost v(gamma) from
the call itself, so a short call spends its first blocks measuring, and where no gamma can
pay (a draft at half a target step, verification passes several steps long: llama.cpp on
some CPUs) it still drafts and probes, and each probe feeds the draft every token it
skipped. Timing the passes once per CPU, pair and thread count (a few seconds) lets every
call start from the costs, and stop drafting at once where nothing can pay.

Timed on a context of CONTEXT_TOKENS cached positions, as in a short prompt, through the
backend's own per-call cache (`engine.backend.open_cache`); kept for llama.cpp pairs, keyed
by the GGUF files' digests, in the file `draft_format` keeps (`cpu-choices.json`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..cpu import cpu_info
from ..engine.backend import is_llamacpp, open_cache, output_rows
from ..engine.gamma import BEST_CASE_ALPHA, CostPrior, best_case_speedup
from .draft_format import CHOICES_FILE, read_choices, write_choice
from .gguf_convert import cache_root, file_fingerprint

#: cached positions before the timed passes; rounds timed (median kept) after the warm-up rounds
CONTEXT_TOKENS = 64
TIMED_ROUNDS = 7
WARM_UP_ROUNDS = 2
#: how the costs are timed: a new method (2: rounds of every size) times a pair again
TIMING_METHOD = 2
#: verification passes timed: gamma 0 (the decode step) to this gamma
MAX_TIMED_GAMMA = 4


def cached_context(model, generator: torch.Generator, tokens: int = CONTEXT_TOKENS):
    """A fresh per-call cache of `model` holding `tokens` random tokens (after which passes
    are timed), and the vocabulary size."""
    cache = open_cache(model)
    vocab = output_rows(model)
    cache.forward(torch.randint(0, vocab, (tokens,), generator=generator), 1)
    return cache, vocab


def timed_pass(cache, block: torch.Tensor) -> float:
    """Seconds of one pass over `block` ([n] long) after the cached context, which is kept."""
    length = cache.length
    start = time.perf_counter()
    cache.forward(block, len(block))
    seconds = time.perf_counter() - start
    cache.rollback(length)
    return seconds


def median_pass_seconds(passes: dict, rounds: int = TIMED_ROUNDS, warm_up: int = WARM_UP_ROUNDS) -> dict:
    """passes: key -> (cache, block [n] long). Median seconds of each pass, timed in rounds:
    every round times every pass in turn, and the first `warm_up` rounds are not kept.

    Why rounds: a machine just after loading a model runs its first passes slower, and
    timing one size after another put that slowness in the first size alone (the decode
    step), which made verification look cheap and the cost model draft where nothing
    pays (docs/cheap-draft.md, section 8). In rounds it falls on every size alike, in the
    warm-up rounds and the medians' outliers."""
    times = {key: [] for key in passes}
    for round_ in range(warm_up + rounds):
        for key, (cache, block) in passes.items():
            seconds = timed_pass(cache, block)
            if round_ >= warm_up:
                times[key].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def measure_pass_costs(target, draft) -> CostPrior:
    """Time the draft's decode step and the target's passes over 1..MAX_TIMED_GAMMA+1 tokens,
    all in the same rounds (`median_pass_seconds`)."""
    generator = torch.Generator().manual_seed(0)
    target_cache, vocab = cached_context(target, generator)
    draft_cache, draft_vocab = cached_context(draft, generator)
    passes = {gamma: (target_cache, torch.randint(0, vocab, (gamma + 1,), generator=generator))
              for gamma in range(MAX_TIMED_GAMMA + 1)}
    passes["draft"] = (draft_cache, torch.randint(0, draft_vocab, (1,), generator=generator))
    medians = median_pass_seconds(passes)
    return CostPrior(medians.pop("draft"), medians)


def _model_key(model) -> str:
    return f"{Path(model.path).name}:{file_fingerprint(Path(model.path))[:12]} threads {model.threads}"


def pair_key(target, draft) -> str:
    """What the costs depend on: the CPU (model and flags), each model's file or shape, and
    the timing method (costs kept by an earlier one are not read)."""
    name, flags = cpu_info()
    return (f"pass costs v{TIMING_METHOD} | {name} [{' '.join(flags)}] | target {_model_key(target)} "
            f"| draft {_model_key(draft)}")


def pair_cost_prior(target, draft, folder: Path | None = None) -> tuple[CostPrior | None, bool]:
    """(the pair's pass costs, whether they came from the cache): read, or timed and cached.
    Only for GGUF pairs on llama.cpp, whose files name what was timed; (None, False) else
    (a torch model's cost also depends on its number format and layout, which no key holds)."""
    if not (is_llamacpp(target) and is_llamacpp(draft)):
        return None, False
    path = Path(folder or cache_root()) / CHOICES_FILE
    key = pair_key(target, draft)
    known = read_choices(path).get(key)
    if isinstance(known, dict) and "draft_token_seconds" in known:
        verify = {int(g): float(s) for g, s in known["verify_seconds"].items()}
        return CostPrior(float(known["draft_token_seconds"]), verify), True
    prior = measure_pass_costs(target, draft)
    write_choice(path, key, asdict(prior))  # JSON makes the gamma keys strings; read back above
    return prior, False


def describe_prior(prior: CostPrior, cached: bool) -> str:
    """One line for the output: the costs in target decode steps, where they came from, and
    the best any draft of this cost could do on this machine (so a user whose CPU cannot gain
    from speculation learns it before tuning a draft)."""
    step = prior.verify_seconds[0]
    verify = ", ".join(f"v({g}) {s / step:.2f}" for g, s in sorted(prior.verify_seconds.items()) if g)
    source = "cached timing" if cached else "timed now"
    gamma, ceiling = best_case_speedup(prior.cost_ratio(), prior.verify_ratio, prior.largest_timed())
    return (f"pass costs: decode step {1000 * step:.1f} ms, draft c {prior.draft_token_seconds / step:.2f}, "
            f"{verify}; {source}; a draft right {BEST_CASE_ALPHA:.0%} of the time would reach at most "
            f"{ceiling:.2f}x here (gamma {gamma})")
