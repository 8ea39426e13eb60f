"""One benchmark configuration = one way to generate; each becomes a `run(prompt, seed)`.

Methods:
- ``target``: our autoregressive loop, the reference every ratio is taken against;
- ``hf-target``: Hugging Face ``generate`` without a draft;
- ``speculative``: our speculative loop with a drafter (model draft or prompt lookup);
- ``hf-assisted``: ``generate(assistant_model=draft)`` with a constant number of
  assistant tokens (gamma) and no confidence-based early stop, so gamma means the same
  as ours; with gamma None, HF's own defaults (its dynamic schedule);
- ``hf-prompt-lookup``: ``generate(prompt_lookup_num_tokens=gamma)``;
- ``llama-plain`` and ``llama-speculative``: llama.cpp's own plain decode and speculative
  decoding, on the llama.cpp backend (`llama_runners`).

Stop strings: our loops end on the token that completes one. HF gets the same strings
(a `StopStringCriteria`), but its assisted generation checks them only at the end of each
accepted block, so a stop completed inside a block goes unnoticed and generation runs on.
Every HF output is cut at its first stop string, as ours are, so texts and token counts
compare; its time still includes the tokens it made past the stop (what its user waits
for), and the sample records how many there were.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from ..engine import GenerationStats, Lenience, StopStrings, autoregressive_generate, speculative_generate
from ..engine.stops import cut_at_stop
from ..errors import DistillSpecError

METHODS = ("target", "hf-target", "speculative", "hf-assisted", "hf-prompt-lookup", "llama-plain",
           "llama-speculative")
DRAFTED_METHODS = ("speculative", "hf-assisted", "hf-prompt-lookup", "llama-speculative")


@dataclass(frozen=True)
class BenchConfig:
    """What is measured: a method, its draft (a spec string) and gamma, at a temperature."""

    method: str
    temperature: float
    draft: str | None = None
    gamma: int | None = None
    adaptive: str | None = None  # None, 'heuristic' or 'cost-model' (ours only)
    lenience: float | None = None  # lossy acceptance epsilon < 1 (ours only); None is exact
    lenience_function: str = "linear"

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.draft is not None and self.method != "hf-prompt-lookup":
            parts.append(self.draft)
        if self.gamma is not None:
            parts.append(f"g{self.gamma}" + (f"-{self.adaptive}" if self.adaptive else ""))
        elif self.method == "hf-assisted":
            parts.append("hf-defaults")
        if self.lenience is not None:
            parts.append(f"{self.lenience_function}-eps{self.lenience:g}")
        return " ".join(parts)


@dataclass
class Sample:
    """One generation: its new tokens, wall-clock seconds, time to first token, our stats."""

    tokens: list[int]
    seconds: float
    time_to_first_token: float | None  # until the first step's tokens were out
    stats: GenerationStats | None = None
    first_step_tokens: int | None = None  # how many tokens that first step emitted
    tokens_past_stop: int = 0  # generated after the first stop string and cut off (HF's assisted loop)


Runner = Callable[[list[int], int], Sample]


@dataclass
class Models:
    """What the runners need: the target, our drafters and plain HF models for HF's loop."""

    target: PreTrainedModel
    drafters: dict  # draft spec -> Drafter
    peer_drafts: dict  # draft spec -> its model (model drafts only): what a peer runner (HF assisted generation, llama.cpp's own speculation) is given
    eos_ids: list[int]
    pad_id: int | None
    vocab_size: int | None
    stop: StopStrings | None = None
    tokenizer: object = None  # HF generate needs it for stop strings
    llama_tools: object = None  # llama.cpp backend: the folder of llama.cpp's own tools (llama_runners)
    cost_priors: dict = None  # draft spec -> the pair's pass costs timed at load (cost-model rows start from them)
    _llama_plain: object = None

    def llama_plain(self):
        """llama-cpp-python's `Llama` on the target's GGUF, opened on first use."""
        if self._llama_plain is None:
            from .llama_runners import open_llama_plain

            self._llama_plain = open_llama_plain(self.target)
        return self._llama_plain


def make_runner(config: BenchConfig, models: Models, max_new_tokens: int) -> Runner:
    """A function generating for one prompt (token ids) and seed under `config`."""
    if config.method == "target":
        return _ours_target(config, models, max_new_tokens)
    if config.method == "speculative":
        return _ours_speculative(config, models, max_new_tokens)
    if config.method in ("hf-target", "hf-assisted", "hf-prompt-lookup"):
        return _hf(config, models, max_new_tokens)
    if config.method == "llama-plain":
        from .llama_runners import llama_plain_runner

        return llama_plain_runner(config, models, max_new_tokens)
    if config.method == "llama-speculative":
        from .llama_runners import llama_speculative_runner

        if models.llama_tools is None:
            raise DistillSpecError("llama.cpp's own speculative decoding needs its tools: run `make bench-tools`")
        return llama_speculative_runner(config, models, max_new_tokens, models.llama_tools)
    raise DistillSpecError(f"unknown bench method {config.method!r}; known: {', '.join(METHODS)}")


def _ours_target(config: BenchConfig, models: Models, max_new_tokens: int) -> Runner:
    def run(prompt: list[int], seed: int) -> Sample:
        result = autoregressive_generate(models.target, prompt, max_new_tokens=max_new_tokens,
                                         temperature=config.temperature, seed=seed, eos_token_id=models.eos_ids,
                                         score_target_nll=True, stop=models.stop)
        stats = result.stats
        return Sample(result.tokens, stats.total_seconds, stats.time_to_first_token, stats, stats.first_step_tokens)

    return run


def _ours_speculative(config: BenchConfig, models: Models, max_new_tokens: int) -> Runner:
    drafter = models.drafters[config.draft]
    lenience = None if config.lenience is None else Lenience(config.lenience, config.lenience_function)
    prior = (models.cost_priors or {}).get(config.draft) if config.adaptive == "cost-model" else None

    def run(prompt: list[int], seed: int) -> Sample:
        result = speculative_generate(models.target, drafter, prompt, max_new_tokens=max_new_tokens,
                                      gamma=config.gamma, adaptive_gamma=config.adaptive, lenience=lenience,
                                      temperature=config.temperature, seed=seed, eos_token_id=models.eos_ids,
                                      tokenizer_vocab_size=models.vocab_size, score_target_nll=True,
                                      stop=models.stop, cost_prior=prior)
        stats = result.stats
        return Sample(result.tokens, stats.total_seconds, stats.time_to_first_token, stats, stats.first_step_tokens)

    return run


class _FirstTokenClock(BaseStreamer):
    """Records when `generate` streams its first new token (its first put is the prompt)."""

    def __init__(self, start: float):
        self.start = start
        self.puts = 0
        self.first_token_seconds: float | None = None
        self.first_step_tokens: int | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.start
            self.first_step_tokens = int(value.numel())  # assisted generation puts a whole block

    def end(self) -> None:
        pass


def hf_generate_kwargs(config: BenchConfig, models: Models, max_new_tokens: int) -> dict:
    """Arguments that make HF `generate` do what `config` says and nothing else.

    Sampling is plain temperature sampling (HF's default top_k=50 is switched off), and
    assisted generation drafts exactly gamma tokens every step.
    """
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=models.eos_ids, pad_token_id=models.pad_id)
    if config.temperature > 0:
        kwargs.update(do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    if config.method == "hf-assisted":
        kwargs.update(assistant_model=models.peer_drafts[config.draft])
    elif config.method == "hf-prompt-lookup":
        kwargs.update(prompt_lookup_num_tokens=config.gamma)
    if models.stop is not None:
        # as a criteria object, not stop_strings=: with stop_strings HF hands its generation
        # config, stops included, to the assistant's own generate without a tokenizer, which
        # raises (transformers issue 48039); the criterion checks only the main loop's output
        from transformers import StoppingCriteriaList, StopStringCriteria

        kwargs.update(stopping_criteria=StoppingCriteriaList([StopStringCriteria(models.tokenizer,
                                                                                  models.stop.strings)]))
    return kwargs


def assistant_settings(config: BenchConfig) -> dict:
    """What to set on the assistant's generation_config: HF reads num_assistant_tokens and
    the confidence threshold from the *assistant's* config, not from generate's kwargs."""
    if config.method != "hf-assisted" or config.gamma is None:
        return {}
    return {"num_assistant_tokens": config.gamma, "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0}


@contextlib.contextmanager
def _assistant_config(model, settings: dict):
    """Set fields of a draft's generation_config for one call, then put the old values back."""
    config = model.generation_config
    saved = {key: getattr(config, key, None) for key in settings}
    for key, value in settings.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def _hf(config: BenchConfig, models: Models, max_new_tokens: int) -> Runner:
    if config.method == "hf-assisted" and config.draft not in models.peer_drafts:
        raise DistillSpecError(f"draft {config.draft!r} is not a model; HF assisted generation needs one")
    kwargs = hf_generate_kwargs(config, models, max_new_tokens)
    device = models.target.device

    def run(prompt: list[int], seed: int) -> Sample:
        input_ids = torch.tensor([prompt], device=device)
        assistant = models.peer_drafts.get(config.draft) if config.method == "hf-assisted" else None
        settings = assistant_settings(config)
        # HF samples from the global generator: seed it in a forked state that is restored after
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(), \
                (_assistant_config(assistant, settings) if settings else contextlib.nullcontext()):
            torch.manual_seed(seed)
            start = time.perf_counter()
            clock = _FirstTokenClock(start)
            output = models.target.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                            streamer=clock, **kwargs)
            seconds = time.perf_counter() - start
        new = output[0, len(prompt):].tolist()
        kept, _ = cut_at_stop(models.stop, [], new)
        return Sample(kept, seconds, clock.first_token_seconds, None, clock.first_step_tokens,
                      tokens_past_stop=len(new) - len(kept))

    return run
