"""Generation loops: the autoregressive reference and speculative decoding.

`autoregressive_generate` is the slow, obviously-correct reference: one target pass per
token. `speculative_generate` drafts gamma tokens, scores them with one target pass,
keeps the accepted prefix plus one recovered/bonus token (see `sampling.verify_block`),
and lets `CachedLM` roll both KV caches back to the committed text. Under greedy
decoding (fp32) the two produce the same tokens; under sampling, the same distribution.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel

from .cached_lm import CachedLM
from .drafters import DraftProposal, Drafter, ModelDrafter
from .errors import DistillSpecError
from .gamma import StepReport, make_gamma_policy
from .sampling import Lenience, SamplingConfig, sample_tokens, token_log_likelihoods, verify_block, warp_logits

#: Called after each step with the emitted tokens and how many of them (a prefix) were
#: accepted draft tokens; the last token of a step always comes from the target.
TokenCallback = Callable[[list[int], int], None]


@dataclass
class GenerationStats:
    """Counters and timings of one generation (see DESIGN.md for the vocabulary)."""

    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0  # draft model forward passes
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # accepted at draft pos i
    drafted_per_position: list[int] = field(default_factory=list)  # drafted at draft pos i
    accepted_length_histogram: list[int] = field(default_factory=list)  # steps accepting n
    gamma_history: list[int] = field(default_factory=list)
    # per step (per token for the autoregressive loop); the first step includes the prefill
    draft_seconds_per_step: list[float] = field(default_factory=list)
    target_seconds_per_step: list[float] = field(default_factory=list)
    draft_passes_per_step: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0
    target_seconds: float = 0.0
    # sum over emitted tokens of log p_target(token), T=1 and unfiltered
    target_log_likelihood: float = 0.0
    total_seconds: float = 0.0
    time_to_first_token: float = 0.0
    stopped_by: str = "max_new_tokens"  # or "eos"

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def block_efficiency(self) -> float:
        """tau: tokens emitted per target pass (the prefill pass emits the first token)."""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def target_nll_per_token(self) -> float | None:
        """Mean negative log-likelihood of the output under the target (lower: more target-like)."""
        return -self.target_log_likelihood / self.new_tokens if self.new_tokens else None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def draft_to_verify_ratio(self) -> float | None:
        """Mean draft forward pass / mean target verification pass, prefill step excluded.

        Not the paper's cost ratio c, which divides by one decode step of the target
        *alone*; a verification pass scores gamma+1 tokens and can cost more (on CPUs
        without wide bf16 units, much more). `distillspec bench` measures c itself.
        """
        passes = sum(self.draft_passes_per_step[1:])
        target_steps = self.target_seconds_per_step[1:]
        if not passes or not target_steps or sum(target_steps) <= 0:
            return None
        per_target = sum(target_steps) / len(target_steps)
        return (sum(self.draft_seconds_per_step[1:]) / passes) / per_target

    def record_step(self, drafted: int, accepted: int, gamma: int) -> None:
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.gamma_history.append(gamma)
        _bump(self.drafted_per_position, range(drafted))
        _bump(self.accepted_per_position, range(accepted))
        _bump(self.accepted_length_histogram, [accepted])

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            acceptance_rate=self.acceptance_rate,
            block_efficiency=self.block_efficiency,
            tokens_per_second=self.tokens_per_second,
            target_nll_per_token=self.target_nll_per_token,
            draft_to_verify_ratio=self.draft_to_verify_ratio,
        )
        return out


def _bump(counts: list[int], indices) -> None:
    for i in indices:
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += 1


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only, prompt excluded
    stats: GenerationStats


# ----------------------------------------------------------------------------- inputs


def as_token_list(input_ids, vocab_size: int | None = None) -> list[int]:
    """Accept a 1-D tensor, a [1, T] tensor or a list of ints; return a non-empty list."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise DistillSpecError(
                    f"input_ids has batch size {input_ids.shape[0]}; only batch size 1 is supported"
                )
            input_ids = input_ids[0]
        elif input_ids.dim() != 1:
            raise DistillSpecError(
                f"input_ids must be 1-D or [1, T], got shape {tuple(input_ids.shape)}"
            )
        ids = [int(t) for t in input_ids.tolist()]
    else:
        try:
            ids = [int(t) for t in input_ids]
        except (TypeError, ValueError) as exc:
            raise DistillSpecError(f"input_ids must be a list of token ids: {exc}") from None
    if not ids:
        raise DistillSpecError("the prompt is empty: give at least one token")
    if vocab_size is not None:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise DistillSpecError(
                f"prompt token ids {bad[:5]} are outside the vocabulary 0..{vocab_size - 1}"
            )
    return ids


def model_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output head (may exceed the tokenizer's size when padded)."""
    return int(model.get_output_embeddings().weight.shape[0])


def context_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_lengths(model: PreTrainedModel, prompt_len: int, max_new_tokens: int) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise DistillSpecError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    limit = context_length(model)
    if limit is None:
        return
    if prompt_len >= limit:
        raise DistillSpecError(
            f"the prompt has {prompt_len} tokens but the model's context is {limit} tokens"
        )
    if prompt_len + max_new_tokens > limit:
        raise DistillSpecError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {limit} tokens; lower max_new_tokens to {limit - prompt_len} or less"
        )


def shared_vocab_size(target_vocab: int, draft_vocab: int, tokenizer_vocab: int | None) -> int:
    """The vocabulary both models are compared over.

    Equal sizes are fine. Different sizes are tolerated only when both cover the
    tokenizer (the extra rows are padding no tokenizer can produce); then logits are
    compared over the smaller size.
    """
    if target_vocab == draft_vocab:
        return target_vocab
    common = min(target_vocab, draft_vocab)
    if tokenizer_vocab is not None and common >= tokenizer_vocab:
        return common
    known = "" if tokenizer_vocab is None else f" and the tokenizer has {tokenizer_vocab}"
    raise DistillSpecError(
        f"draft and target vocabularies do not match: the target has {target_vocab} "
        f"output rows, the draft {draft_vocab}{known}; use a draft built for this target's "
        "tokenizer"
    )


def eos_ids_for(model: PreTrainedModel, eos_token_id) -> set[int]:
    """None: the model's generation config EOS; an int or ints: those; () disables EOS."""
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
        if eos_token_id is None:
            return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1], True
    return tokens, False


# ----------------------------------------------------------------------------- reference


def autoregressive_generate(
    target: PreTrainedModel,
    input_ids,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id=None,
    on_tokens: TokenCallback | None = None,
) -> GenerationResult:
    """Target-only decoding, one forward pass per token: the reference for everything else."""
    sampling = SamplingConfig(temperature, top_k, top_p)
    lm = CachedLM(target)
    tokens = as_token_list(input_ids, model_vocab_size(target))
    check_lengths(target, len(tokens), max_new_tokens)
    eos_ids = eos_ids_for(target, eos_token_id)
    generator = _make_generator(seed, lm.device)
    stats = GenerationStats()
    start = step_start = _now(lm.device)
    new: list[int] = []
    while len(new) < max_new_tokens:
        logits = lm.next_logits(tokens, 1)
        token = int(sample_tokens(warp_logits(logits, sampling), generator)[0])
        stats.target_log_likelihood += _log_likelihood(logits, [token])
        tokens.append(token)
        new.append(token)
        stats.target_calls += 1
        now = _now(lm.device)
        stats.target_seconds_per_step.append(now - step_start)
        step_start = now
        if len(new) == 1:
            stats.time_to_first_token = now - start
        if on_tokens is not None:
            on_tokens([token], 0)
        if token in eos_ids:
            stats.stopped_by = "eos"
            break
    stats.total_seconds = stats.target_seconds = _now(lm.device) - start
    stats.new_tokens = len(new)
    return GenerationResult(tokens=new, stats=stats)


# ----------------------------------------------------------------------------- speculative


def as_drafter(draft, vocab_size: int | None) -> Drafter:
    """A `PreTrainedModel` becomes a `ModelDrafter`; a drafter object is used as is."""
    if isinstance(draft, PreTrainedModel):
        return ModelDrafter(draft, vocab_size=vocab_size)
    if isinstance(draft, Drafter):
        return draft
    raise DistillSpecError(
        f"draft must be a transformers PreTrainedModel or a drafter with propose(), got {type(draft).__name__}"
    )


def speculative_generate(
    target: PreTrainedModel,
    draft,
    input_ids,
    *,
    max_new_tokens: int,
    gamma: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    lenience: Lenience | float | None = None,
    eos_token_id=None,
    adaptive_gamma: str | bool | None = None,
    max_gamma: int | None = None,
    tokenizer_vocab_size: int | None = None,
    on_tokens: TokenCallback | None = None,
) -> GenerationResult:
    """Generate with speculative decoding; exact in distribution unless `lenience` < 1.

    draft: a PreTrainedModel sharing the target's tokenizer, or a Drafter (e.g.
    PromptLookupDrafter). lenience: None/1.0 lossless, a float epsilon in (0, 1) for the
    linear lenience function, or a `Lenience`. adaptive_gamma: None (fixed gamma),
    'heuristic' or 'cost-model'. tokenizer_vocab_size: lets draft and target heads of
    different (padded) sizes be compared over the tokens the tokenizer can produce.
    """
    sampling = SamplingConfig(temperature, top_k, top_p)
    policy = make_gamma_policy(gamma, adaptive_gamma, max_gamma)
    if lenience is not None and not isinstance(lenience, Lenience):
        lenience = Lenience(float(lenience))
    target_vocab = model_vocab_size(target)
    vocab = target_vocab
    if isinstance(draft, PreTrainedModel):
        vocab = shared_vocab_size(target_vocab, model_vocab_size(draft), tokenizer_vocab_size)
    drafter = as_drafter(draft, vocab)
    target_lm = CachedLM(target, vocab_size=vocab)
    tokens = as_token_list(input_ids, vocab)
    check_lengths(target, len(tokens), max_new_tokens)
    eos_ids = eos_ids_for(target, eos_token_id)
    generator = _make_generator(seed, target_lm.device)

    stats = GenerationStats()
    start = _now(target_lm.device)
    new: list[int] = []
    while len(new) < max_new_tokens:
        step_gamma = min(policy.next_gamma(), max_new_tokens - len(new) - 1)
        t0 = _now(target_lm.device)
        proposal = (
            drafter.propose(tokens, step_gamma, sampling, generator)
            if step_gamma > 0
            else DraftProposal(tokens=[], probs=None)
        )
        proposal = _clip_proposal(proposal, step_gamma)
        t1 = _now(target_lm.device)
        n_drafted = len(proposal.tokens)
        target_logits = target_lm.next_logits(tokens + proposal.tokens, n_drafted + 1)
        result = verify_block(
            torch.tensor([proposal.tokens], dtype=torch.long, device=target_lm.device),
            None if proposal.probs is None else proposal.probs.unsqueeze(0),
            warp_logits(target_logits, sampling).unsqueeze(0),
            generator,
            lenience,
        )
        t2 = _now(target_lm.device)
        n_accepted = int(result.num_accepted[0])
        emitted, hit_eos = _cut_at_eos(
            proposal.tokens[:n_accepted] + [int(result.next_tokens[0])], eos_ids
        )
        _account_step(stats, proposal, n_accepted, step_gamma, t1 - t0, t2 - t1)
        stats.target_log_likelihood += _log_likelihood(target_logits, emitted)
        if not new:
            stats.time_to_first_token = t2 - start
        if n_drafted:
            policy.update(StepReport(n_drafted, n_accepted, t1 - t0, proposal.forward_passes, t2 - t1))
        tokens.extend(emitted)
        new.extend(emitted)
        if on_tokens is not None:
            on_tokens(emitted, min(n_accepted, len(emitted)))
        if hit_eos:
            stats.stopped_by = "eos"
            break
    stats.total_seconds = _now(target_lm.device) - start
    stats.new_tokens = len(new)
    return GenerationResult(tokens=new, stats=stats)


def _log_likelihood(logits: torch.Tensor, tokens: list[int]) -> float:
    """Sum of log p_target over `tokens`; logits: [>= len(tokens), vocab], row i scores token i."""
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)
    return float(token_log_likelihoods(logits[: len(tokens)], index).sum())


def _clip_proposal(proposal: DraftProposal, gamma: int) -> DraftProposal:
    """Never verify more than gamma tokens, whatever a drafter returned."""
    if len(proposal.tokens) <= gamma:
        return proposal
    probs = None if proposal.probs is None else proposal.probs[:gamma]
    return DraftProposal(proposal.tokens[:gamma], probs, proposal.forward_passes)


def _account_step(
    stats: GenerationStats,
    proposal: DraftProposal,
    n_accepted: int,
    gamma: int,
    draft_seconds: float,
    target_seconds: float,
) -> None:
    stats.record_step(len(proposal.tokens), n_accepted, gamma)
    stats.target_calls += 1
    stats.draft_calls += proposal.forward_passes
    stats.draft_seconds += draft_seconds
    stats.target_seconds += target_seconds
    stats.draft_seconds_per_step.append(draft_seconds)
    stats.target_seconds_per_step.append(target_seconds)
    stats.draft_passes_per_step.append(proposal.forward_passes)
