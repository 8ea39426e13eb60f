"""Generation loops: the autoregressive reference and speculative decoding.

`autoregressive_generate` is the slow, obviously-correct reference: one target pass per
token. `speculative_generate` is a short loop over a `SpeculativeCall`, the state of one
call: it owns the target's KV cache and the drafter's session (so nothing carries over
between calls), the committed tokens and the statistics. One step drafts gamma tokens,
scores them with one target pass, keeps the accepted prefix plus one recovered or bonus
token (`sampling.verify_greedy` / `verify_block`), and rolls the target cache back to the
committed text; the draft session rolls itself back by content on its next proposal.
Draft tokens stay tensors until the number accepted is known: one host read per step.

With a `LookupFirstDrafter` a step first asks prompt lookup for a block sized by its own
ramp policy, and drafts with the model (sized by the call's policy) only where lookup finds
no match; each policy hears only of its own blocks.

Under greedy decoding (fp32) the two loops produce the same tokens; under sampling, the
same distribution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from ..errors import DistillSpecError
from .drafters import DraftProposal, as_drafter, draft_model_of, empty_proposal, open_session
from .gamma import DEFAULT_GAMMA, RAMP_MAX_GAMMA, CostPrior, GammaPolicy, RampGamma, StepReport, \
    make_gamma_policy
from .inputs import as_token_list, check_lengths, eos_ids_for, evaluating, make_generator, shared_vocab_size
from .backend import model_device, open_cache, output_rows
from .sampling import Lenience, SamplingConfig, next_token, token_log_likelihoods, verify_block, verify_greedy, \
    warp_logits
from .stats import GenerationStats
from .stops import StopStrings, as_stop_strings, cut_at_stop

#: Called after each step with the emitted tokens and how many of them (a prefix) were
#: accepted draft tokens; the last token of a step always comes from the target.
TokenCallback = Callable[[list[int], int], None]


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only, prompt excluded
    stats: GenerationStats


@dataclass(frozen=True)
class DecodeSettings:
    """What every step of one call needs, validated once."""

    sampling: SamplingConfig
    max_new_tokens: int
    eos_ids: frozenset[int]
    lenience: Lenience | None = None
    score_target_nll: bool = False
    stop: StopStrings | None = None


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cut_at_eos(tokens: list[int], eos_ids: frozenset[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1], True
    return tokens, False


def _log_likelihood(logits: torch.Tensor, tokens: list[int]) -> float:
    """Sum of log p_target over `tokens`; logits: [>= len(tokens), V], row i scores token i."""
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)
    return float(token_log_likelihoods(logits[: len(tokens)], index).sum())


class _Scorer:
    """The optional target log-likelihood of the output, timed apart from generation."""

    def __init__(self, stats: GenerationStats, enabled: bool):
        self.stats, self.enabled = stats, enabled
        if enabled:
            stats.target_log_likelihood = 0.0

    def add(self, logits: torch.Tensor, tokens: list[int]) -> None:
        if self.enabled:
            start = time.perf_counter()
            self.stats.target_log_likelihood += _log_likelihood(logits, tokens)
            self.stats.scoring_seconds += time.perf_counter() - start


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
    score_target_nll: bool = False,
    stop: StopStrings | list[str] | None = None,
    tokenizer=None,
) -> GenerationResult:
    """Target-only decoding, one forward pass per token: the reference for everything else.
    stop: end after the token that completes one of its stop strings (kept in the output):
    a StopStrings, or a list of strings with `tokenizer` to decode. The target runs in eval
    mode for the call, whatever mode it was left in (restored after)."""
    sampling = SamplingConfig(temperature, top_k, top_p)
    stop = as_stop_strings(stop, tokenizer)
    tokens = as_token_list(input_ids, output_rows(target))
    check_lengths(target, len(tokens), max_new_tokens)
    with evaluating(target):
        return _autoregressive(target, tokens, sampling, max_new_tokens, seed, eos_token_id, on_tokens,
                               score_target_nll, stop)


def _autoregressive(target, tokens: list[int], sampling: SamplingConfig, max_new_tokens: int, seed, eos_token_id,
                    on_tokens, score_target_nll: bool, stop) -> GenerationResult:
    eos_ids = frozenset(eos_ids_for(target, eos_token_id))
    lm = open_cache(target)
    generator = make_generator(seed, lm.device)
    stats = GenerationStats()
    scorer = _Scorer(stats, score_target_nll)
    feed = torch.tensor(tokens, dtype=torch.long)
    start = step_start = _now(lm.device)
    new: list[int] = []
    while len(new) < max_new_tokens:
        logits = lm.forward(feed, 1)
        sampled, _ = next_token(logits, sampling, generator)
        token = int(sampled[0])
        now = _now(lm.device)
        stats.record_decode_step(now - step_start)
        scorer.add(logits, [token])
        step_start = _now(lm.device)
        new.append(token)
        if len(new) == 1:
            stats.time_to_first_token = now - start
            stats.first_step_tokens = 1
        if on_tokens is not None:
            on_tokens([token], 0)
        if token in eos_ids:
            stats.stopped_by = "eos"
            break
        if cut_at_stop(stop, new[:-1], [token])[1]:
            stats.stopped_by = "stop"
            break
        feed = sampled
    stats.total_seconds = _now(lm.device) - start - stats.scoring_seconds
    stats.new_tokens = len(new)
    return GenerationResult(tokens=new, stats=stats)


# ----------------------------------------------------------------------------- speculative


class SpeculativeCall:
    """The state of one speculative generation: both caches, committed tokens, statistics.

    Created per call, so a drafter object can serve any number of calls and each pays its
    own prefill. `run()` steps until `max_new_tokens` or EOS.
    """

    def __init__(self, target: PreTrainedModel, drafter, prompt: list[int], settings: DecodeSettings,
                 policy, vocab_size: int, generator: torch.Generator, on_tokens: TokenCallback | None,
                 draft_read_chunk: int | None = None):
        target_vocab = output_rows(target)
        self.target = open_cache(target, vocab_size=None if vocab_size == target_vocab else vocab_size)
        self.target.resume(prompt)  # a server's slot may still hold part of the prompt
        self.draft = open_session(drafter, vocab_size)
        self.settings, self.policy, self.generator, self.on_tokens = settings, policy, generator, on_tokens
        # a LookupFirstDrafter's lookup blocks have their own policy (the ramp); the model's, `policy`
        self.lookup_policy = RampGamma(1, RAMP_MAX_GAMMA) if hasattr(self.draft, "look_up") else None
        # a server's limit on what a draft model reads in one step (None: all it lacks at once)
        self.draft_read_chunk = draft_read_chunk if hasattr(self.draft, "read_ahead") else None
        self.tokens = list(prompt)
        self.new: list[int] = []
        self.stats = GenerationStats()
        self.scorer = _Scorer(self.stats, settings.score_target_nll)
        self.device = self.target.device
        self.done = False

    def run(self) -> GenerationResult:
        start = _now(self.device)
        while not self.done:
            self.step(start)
        return self.result(start)

    def _propose(self, gamma: int, look_up: bool = False) -> DraftProposal:
        """Up to `gamma` tokens from the draft session (`look_up`: its prompt lookup)."""
        if gamma <= 0:
            return empty_proposal(self.device)
        if look_up:
            proposal = self.draft.look_up(self.tokens, gamma)
        else:
            proposal = self.draft.propose(self.tokens, gamma, self.settings.sampling, self.generator)
        drafted = torch.as_tensor(proposal.tokens, dtype=torch.long, device=self.device)
        probs = proposal.probs
        if drafted.shape[0] > gamma:  # never verify more than gamma tokens, whatever a drafter returned
            drafted, probs = drafted[:gamma], None if probs is None else probs[:gamma]
        return DraftProposal(drafted, probs, proposal.forward_passes, proposal.tokens_fed)

    def _verify(self, proposal: DraftProposal, logits: torch.Tensor):
        """logits: [G + 1, V] target logits at the block positions and the one after."""
        sampling = self.settings.sampling
        if sampling.greedy:
            return verify_greedy(proposal.tokens.unsqueeze(0), logits.unsqueeze(0))
        draft_probs = None if proposal.probs is None else proposal.probs.unsqueeze(0)
        return verify_block(proposal.tokens.unsqueeze(0), draft_probs, warp_logits(logits, sampling).unsqueeze(0),
                            self.generator, self.settings.lenience)

    def step(self, start: float) -> None:
        """One block: draft, one target pass, verification."""
        pending = self.begin_step()
        logits = self.target.forward(pending.feed, pending.num_logits)
        self.end_step(pending, logits, start)

    @property
    def prompt_left(self) -> int:
        """Prompt positions the target has yet to read (0 once the first step is done)."""
        return 0 if self.new else len(self.tokens) - self.target.length

    def prompt_chunk(self, limit: int) -> torch.Tensor:
        """The next `limit` prompt tokens, for the target to read in a pass of their own
        before the first step: [n] long, n = min(limit, prompt_left - 1). The prompt's last
        token is never in a chunk: the first step feeds it with its block, and verifies the
        block against its logits. A server reads long prompts in chunks so that the slots
        already generating keep going between them."""
        start = self.target.length
        count = min(limit, self.prompt_left - 1)
        if count < 1:
            raise ValueError(f"no prompt chunk to read: {self.prompt_left} prompt position(s) left, limit {limit}")
        return torch.tensor(self.tokens[start:start + count], dtype=torch.long, device=self.device)

    def begin_step(self, draft_read_budget: int | None = None) -> "PendingStep":
        """Draft this step's block; returns what the target pass must feed. A server runs
        the passes of several calls together (`llamacpp.batched_forward`) between this and
        `end_step`. draft_read_budget: what is left of the pass's positions for drafts that
        read ahead (see `speculative_call`'s draft_read_chunk); at 0 a draft that must read
        ahead waits, and the step drafts nothing from it. None: no budget but the chunk."""
        left = self.settings.max_new_tokens - len(self.new) - 1
        t0 = _now(self.device)
        policy, gamma, proposal = self._block(left, draft_read_budget)
        t1 = _now(self.device)
        unseen = torch.tensor(self.tokens[self.target.length:], dtype=torch.long, device=self.device)
        return PendingStep(gamma, proposal, len(self.tokens), torch.cat([unseen, proposal.tokens]),
                           int(proposal.tokens.shape[0]) + 1, t0, t1, policy)

    def _block(self, left: int, read_budget: int | None = None):
        """(policy, gamma, proposal) of this step: the lookup's block where the context has a
        match (with a LookupFirstDrafter), else the draft session's, or its read ahead (an
        empty block); `left` caps gamma."""
        if self.lookup_policy is not None:
            gamma = min(self.lookup_policy.next_gamma(), left)
            proposal = self._propose(gamma, look_up=True)
            if proposal.tokens.shape[0]:
                return self.lookup_policy, gamma, proposal
        gamma = min(self.policy.next_gamma(), left)
        chunk = self.draft_read_chunk
        if gamma > 0 and chunk is not None and self.draft.behind(self.tokens) > chunk:
            limit = chunk if read_budget is None else min(chunk, read_budget)
            read = self.draft.read_ahead(self.tokens, limit) if limit > 0 else empty_proposal(self.device)
            return self.policy, 0, read  # nothing drafted: the read ahead, or a wait for the next pass
        return self.policy, gamma, self._propose(gamma)

    def end_step(self, pending: "PendingStep", logits: torch.Tensor, start: float,
                 pass_shared_with_prefill: bool = False) -> list[int]:
        """Verify the block against the target's `logits` ([G + 1, V]), commit, and return
        the tokens emitted. pass_shared_with_prefill: the pass also read another call's
        prompt, so its time says nothing of this call's costs (the γ policy skips it)."""
        settings, first, proposal = self.settings, not self.new, pending.proposal
        drafted, committed, t0, t1 = pending.num_logits - 1, pending.committed, pending.t0, pending.t1
        result = self._verify(proposal, logits)
        # the one host read of the step: accept count, next token and the drafted ids
        row = torch.cat([result.num_accepted, result.next_tokens, proposal.tokens]).tolist()
        t2 = _now(self.device)
        accepted = row[0]
        self.target.rollback(committed + accepted)
        emitted, hit_eos = _cut_at_eos(row[2:2 + accepted] + [row[1]], settings.eos_ids)
        emitted, hit_stop = cut_at_stop(settings.stop, self.new, emitted)
        looked_up = self.lookup_policy is not None and pending.policy is self.lookup_policy
        self.stats.record_step(drafted, accepted, pending.gamma, proposal.forward_passes, t1 - t0, t2 - t1,
                               looked_up=looked_up)
        self.stats.draft_tokens_processed += proposal.tokens_fed
        self.scorer.add(logits, emitted)
        if first:
            self.stats.time_to_first_token = t2 - start
            self.stats.first_step_tokens = len(emitted)
        pending.policy.update(StepReport(drafted, accepted, t1 - t0, t2 - t1,
                                         prefill=first or pass_shared_with_prefill or pending.reads_draft,
                                         draft_tokens_fed=proposal.tokens_fed))
        self.tokens.extend(emitted)
        self.new.extend(emitted)
        if self.on_tokens is not None:
            self.on_tokens(emitted, min(accepted, len(emitted)))
        if hit_eos or hit_stop:
            self.stats.stopped_by = "eos" if hit_eos else "stop"
        self.done = hit_eos or hit_stop or len(self.new) >= settings.max_new_tokens
        return emitted

    def result(self, start: float) -> GenerationResult:
        """The call's tokens and statistics, timed from `start`."""
        self.stats.total_seconds = _now(self.device) - start - self.stats.scoring_seconds
        self.stats.new_tokens = len(self.new)
        self.stats.prompt_tokens_kept = getattr(self.target, "reused", 0)
        return GenerationResult(tokens=self.new, stats=self.stats)


@dataclass
class PendingStep:
    """A drafted block waiting for its target pass: feed ([n] long: the committed tokens the
    target has not seen, then the block), the rows of logits wanted (block + 1), and the
    gamma policy that sized the block (told how it went)."""

    gamma: int
    proposal: DraftProposal
    committed: int
    feed: torch.Tensor
    num_logits: int
    t0: float
    t1: float
    policy: GammaPolicy

    @property
    def reads_draft(self) -> bool:
        """The draft model read part of the context instead of drafting (a server's chunked
        catch-up): its time is no step's cost."""
        return self.gamma == 0 and self.proposal.tokens_fed > 0


def speculative_generate(
    target: PreTrainedModel,
    draft,
    input_ids,
    *,
    max_new_tokens: int,
    gamma: int = DEFAULT_GAMMA,
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
    score_target_nll: bool = False,
    stop: StopStrings | list[str] | None = None,
    tokenizer=None,
    cost_prior: CostPrior | None = None,
) -> GenerationResult:
    """Generate with speculative decoding; exact in distribution unless `lenience` < 1.

    draft: a PreTrainedModel sharing the target's tokenizer, or a Drafter (ModelDrafter,
    PromptLookupDrafter, LookupFirstDrafter, or anything with `session()` or `propose()`;
    `adaptive_gamma` sizes a LookupFirstDrafter's model blocks, the ramp its lookup blocks). lenience: None/1.0
    lossless, a float epsilon in (0, 1) for the linear lenience function, or a `Lenience`.
    adaptive_gamma: None (fixed gamma: sampled output reproducible by `seed`), 'heuristic'
    or 'cost-model' (gamma from measured acceptance and costs, 0 when drafting does not pay;
    its choices depend on timing, so sampled output then varies run to run, though its
    distribution is exact). tokenizer_vocab_size:
    lets draft and target heads of different (padded) sizes be compared over the tokens
    the tokenizer can produce. score_target_nll: also record the target's log-likelihood
    of the output (timed apart, excluded from the clocks). stop: end after the token that
    completes one of its stop strings (`StopStrings(strings, tokenizer.decode)`, or a list of
    strings with `tokenizer`), as the reference loop does. Both models run in eval mode for
    the call (their modes are restored after). cost_prior: this pair's pass costs timed
    before the call (`models.pass_costs`), from which the cost model starts.
    """
    drafter = as_drafter(draft)
    with evaluating(target, draft_model_of(drafter)):
        return speculative_call(target, drafter, input_ids, max_new_tokens=max_new_tokens, gamma=gamma,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, lenience=lenience,
                                eos_token_id=eos_token_id, adaptive_gamma=adaptive_gamma, max_gamma=max_gamma,
                                tokenizer_vocab_size=tokenizer_vocab_size, on_tokens=on_tokens,
                                score_target_nll=score_target_nll, stop=stop, tokenizer=tokenizer,
                                cost_prior=cost_prior).run()


def speculative_call(target, draft, input_ids, *, max_new_tokens: int, gamma: int = DEFAULT_GAMMA,
                     temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, lenience: Lenience | float | None = None, eos_token_id=None,
                     adaptive_gamma: str | bool | None = None, max_gamma: int | None = None,
                     tokenizer_vocab_size: int | None = None, on_tokens: TokenCallback | None = None,
                     score_target_nll: bool = False, stop: StopStrings | list[str] | None = None, tokenizer=None,
                     cost_prior: CostPrior | None = None, draft_read_chunk: int | None = None) -> SpeculativeCall:
    """A speculative call, checked and opened (prefill not yet run), for a caller that steps
    it itself: `speculative_generate` runs one to its end; a server steps several together.
    Arguments as `speculative_generate`'s; the caller puts torch models in eval mode.
    draft_read_chunk: a draft model that lacks more of the context than this many positions
    reads this many in a step and drafts nothing in it (lookup still may), so that a server's
    other streams never wait for a draft to read a whole long prompt; None reads it at once.
    A server shares one such chunk among the calls of a pass (`begin_step`'s budget)."""
    if draft_read_chunk is not None and draft_read_chunk < 1:
        raise DistillSpecError(f"draft_read_chunk must be >= 1 (or None: no limit), got {draft_read_chunk}")
    sampling = SamplingConfig(temperature, top_k, top_p)
    stop = as_stop_strings(stop, tokenizer)
    policy = make_gamma_policy(gamma, adaptive_gamma, max_gamma, prior=cost_prior)
    if lenience is not None and not isinstance(lenience, Lenience):
        lenience = Lenience(float(lenience))
    drafter = as_drafter(draft)
    vocab = shared_vocab_size(output_rows(target), getattr(drafter, "vocab_size", None), tokenizer_vocab_size)
    prompt = as_token_list(input_ids, vocab)
    check_lengths(target, len(prompt), max_new_tokens)
    settings = DecodeSettings(sampling, max_new_tokens, frozenset(eos_ids_for(target, eos_token_id)), lenience,
                              score_target_nll, stop)
    generator = make_generator(seed, model_device(target))
    return SpeculativeCall(target, drafter, prompt, settings, policy, vocab, generator, on_tokens, draft_read_chunk)
