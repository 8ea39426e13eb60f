"""The speculative loop against the autoregressive reference, on tiny in-process models."""

import pytest
import torch

from distillspec.engine import sampling
from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.engine.gamma import CostModelGamma
from distillspec.engine.drafters import ModelDrafter, PromptLookupDrafter
from distillspec.errors import DistillSpecError
from distillspec.engine.sampling import SamplingConfig, warp_logits

from conftest import matches_distribution, tiny_llama

PROMPT = [3, 17, 42, 5, 9, 11]


def reference(target, length, prompt=PROMPT, **kwargs):
    return autoregressive_generate(target, prompt, max_new_tokens=length, **kwargs).tokens


def drafts(request, name):
    if name == "prompt-lookup":
        return PromptLookupDrafter()
    if name == "identical":
        return request.getfixturevalue("target_model")
    return request.getfixturevalue(f"{name}_draft")


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("draft_name", ["identical", "unrelated", "partial", "prompt-lookup"])
@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
@pytest.mark.parametrize("length", [1, 13, 30])
def test_greedy_equals_target_greedy(request, target_model, draft_name, gamma, length):
    draft = drafts(request, draft_name)
    result = speculative_generate(target_model, draft, PROMPT, max_new_tokens=length, gamma=gamma)
    assert result.tokens == reference(target_model, length)
    assert len(result.tokens) == length
    stats = result.stats
    assert stats.target_calls == stats.steps
    assert stats.accepted + stats.steps == length  # each step: accepted + 1 token
    assert sum(stats.accepted_length_histogram) == stats.steps
    assert sum(stats.accepted_per_position) == stats.accepted
    if draft_name == "identical" and length > 1:
        assert stats.acceptance_rate == 1.0
    if draft_name == "unrelated" and stats.drafted:
        assert stats.acceptance_rate < 0.3


def test_partial_draft_really_is_partial(target_model, partial_draft):
    stats = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=60, gamma=4).stats
    assert 0.15 < stats.acceptance_rate < 0.95


@pytest.mark.parametrize("adaptive", ["heuristic", "cost-model"])
def test_adaptive_gamma_keeps_greedy_output(target_model, partial_draft, adaptive):
    result = speculative_generate(
        target_model, partial_draft, PROMPT, max_new_tokens=40, gamma=3, adaptive_gamma=adaptive
    )
    assert result.tokens == reference(target_model, 40)
    assert len(set(result.stats.gamma_history)) > 1  # it did adapt


def test_eos_mid_block_stops_exactly_there(target_model):
    ref = reference(target_model, 30)
    # the first position whose token has not appeared before, past the first block
    k = next(i for i in range(3, 30) if ref[i] not in ref[:i])
    result = speculative_generate(
        target_model, target_model, PROMPT, max_new_tokens=30, gamma=8, eos_token_id=ref[k]
    )
    assert result.tokens == ref[: k + 1]
    assert result.stats.stopped_by == "eos"
    assert autoregressive_generate(target_model, PROMPT, max_new_tokens=30, eos_token_id=ref[k]).tokens == ref[: k + 1]


def test_prompt_lookup_is_used_on_repetitive_text(target_model):
    prompt = [5, 6, 7, 8, 9, 10, 11, 12] * 3 + [5, 6]
    result = speculative_generate(target_model, PromptLookupDrafter(), prompt, max_new_tokens=20, gamma=4)
    assert result.tokens == reference(target_model, 20, prompt=prompt)
    assert result.stats.drafted > 0


def test_the_ramp_doubles_its_blocks_while_the_draft_is_right(target_model, unrelated_draft):
    """An identical draft is always right: blocks of 1, 2, 4, 8, 16, then what is left; an
    unrelated one is mostly wrong: blocks of one token, a rare lucky one doubled (the control)."""
    result = speculative_generate(target_model, target_model, PROMPT, max_new_tokens=40, gamma=3,
                                  adaptive_gamma="ramp")
    assert result.tokens == reference(target_model, 40)
    assert result.stats.gamma_history[:5] == [1, 2, 4, 8, 16] and result.stats.steps <= 7
    wrong = speculative_generate(target_model, unrelated_draft, PROMPT, max_new_tokens=40, gamma=3,
                                 adaptive_gamma="ramp")
    assert wrong.tokens == reference(target_model, 40)
    history = wrong.stats.gamma_history
    assert max(history) <= 4 and history.count(1) > len(history) / 2


def test_prompt_lookup_needs_three_matching_tokens_by_default():
    assert PromptLookupDrafter().lookup([1, 2, 3, 9, 1, 2], 3) == []  # "1 2" is a chance pair
    assert PromptLookupDrafter().lookup([1, 2, 3, 9, 4, 1, 2, 3], 3) == [9, 4, 1]


def test_prompt_lookup_finds_latest_continuation():
    drafter = PromptLookupDrafter(max_ngram=2, min_ngram=1)
    assert drafter.lookup([1, 2, 3, 9, 1, 2, 4, 8, 1, 2], 3) == [4, 8, 1]
    assert drafter.lookup([1, 2, 3], 3) == []


def test_draft_cache_after_generation_equals_fresh_prefill(target_model, partial_draft):
    from distillspec.engine.inputs import make_generator
    from distillspec.engine.loop import DecodeSettings, SpeculativeCall
    from distillspec.engine.gamma import FixedGamma
    from distillspec.engine.sampling import SamplingConfig

    settings = DecodeSettings(SamplingConfig(0.0), 25, frozenset())
    call = SpeculativeCall(target_model, ModelDrafter(partial_draft), PROMPT, settings, FixedGamma(4), 64,
                           make_generator(0, torch.device("cpu")), None)
    result = call.run()
    assert result.stats.accepted < result.stats.drafted  # there were rollbacks
    full = PROMPT + result.tokens
    cached = call.draft.lm.next_logits(full, 1)[0]
    with torch.no_grad():
        fresh = partial_draft(torch.tensor([full])).logits[0, -1]
    assert torch.allclose(cached, fresh, atol=1e-4)
    # the target's cache holds exactly the committed text but the last emitted token
    assert call.target.length == len(full) - 1


def test_a_reused_drafter_does_the_same_draft_work_in_every_call(target_model, partial_draft):
    """Caches belong to one call: a second identical call pays the draft's prefill again."""
    drafter = ModelDrafter(partial_draft)
    first = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=20, gamma=4).stats
    second = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=20, gamma=4).stats
    assert first.draft_tokens_processed == second.draft_tokens_processed
    assert first.draft_calls == second.draft_calls
    assert first.draft_tokens_processed >= len(PROMPT) + first.drafted - first.steps  # the prompt was fed


def test_draft_calls_are_counted_forward_passes_not_gamma(target_model, partial_draft):
    stats = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=30, gamma=4).stats
    assert stats.draft_calls == sum(stats.draft_passes_per_step)
    # gamma passes per full step, but a step that ends the output drafts fewer
    assert stats.draft_calls == sum(stats.drafted_per_step)
    assert stats.drafted_per_step[-1] < 4 or stats.new_tokens % 5 == 0


def test_greedy_never_samples(target_model, partial_draft, monkeypatch):
    """At temperature 0 the draft and the verifier take argmaxes: no multinomial over a one-hot."""
    def refuse(*args, **kwargs):
        raise AssertionError("greedy decoding sampled")

    monkeypatch.setattr(torch, "multinomial", refuse)
    result = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=20, gamma=4)
    monkeypatch.undo()
    assert result.tokens == reference(target_model, 20)


def test_streamed_tokens_are_the_output_and_mark_draft_tokens(target_model, partial_draft):
    chunks = []
    result = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=25, gamma=4,
                                  on_tokens=lambda tokens, from_draft: chunks.append((list(tokens), from_draft)))
    assert [t for tokens, _ in chunks for t in tokens] == result.tokens
    assert len(chunks) == result.stats.steps
    assert all(n == len(tokens) - 1 for tokens, n in chunks)  # accepted, then one from the target
    assert sum(n for _, n in chunks) == result.stats.accepted
    assert 0 < result.stats.accepted < result.stats.drafted  # both colours occur


# ----------------------------------------------------------------------------- sampling

SMALL_V = 8


@pytest.fixture(scope="module")
def small_models():
    return tiny_llama(20, vocab_size=SMALL_V), tiny_llama(21, vocab_size=SMALL_V)


def exact_first_two(target, prompt, config: SamplingConfig):
    """The target's exact (warped) distribution of the 1st token and marginal of the 2nd."""
    with torch.no_grad():
        first = warp_logits(target(torch.tensor([prompt])).logits[0, -1], config)
        seconds = torch.stack(
            [warp_logits(target(torch.tensor([prompt + [t]])).logits[0, -1], config) for t in range(SMALL_V)]
        )
    return first, first @ seconds


def sample_first_two(target, draft, prompt, config, n):
    drafter = ModelDrafter(draft)
    outs = [
        speculative_generate(
            target, drafter, prompt, max_new_tokens=3, gamma=2, seed=seed,
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        ).tokens
        for seed in range(n)
    ]
    return torch.tensor([o[0] for o in outs]), torch.tensor([o[1] for o in outs])


CONFIGS = [SamplingConfig(1.0), SamplingConfig(1.0, top_k=4), SamplingConfig(0.8, top_p=0.8)]


@pytest.mark.parametrize("config", CONFIGS, ids=["t1", "topk4", "t0.8-topp0.8"])
def test_sampled_tokens_follow_the_target_distribution(small_models, config):
    target, draft = small_models
    prompt = [1, 2, 3]
    first, second = exact_first_two(target, prompt, config)
    got_first, got_second = sample_first_two(target, draft, prompt, config, n=1500)
    assert matches_distribution(got_first, first)
    assert matches_distribution(got_second, second)


def test_broken_verifier_fails_the_distribution_test(small_models, monkeypatch):
    """Negative control: accepting every draft token yields the draft's distribution."""
    target, draft = small_models
    config, prompt = CONFIGS[0], [1, 2, 3]
    first, _ = exact_first_two(target, prompt, config)
    draft_first, _ = exact_first_two(draft, prompt, config)
    monkeypatch.setattr(sampling, "acceptance_probability", lambda t, d, lenience=None: torch.ones_like(t))
    got_first, _ = sample_first_two(target, draft, prompt, config, n=1500)
    assert not matches_distribution(got_first, first)
    assert matches_distribution(got_first, draft_first)


def test_same_seed_same_output_and_lenience_one_is_lossless(target_model, partial_draft):
    kwargs = dict(max_new_tokens=30, gamma=4, temperature=1.0, top_p=0.9)
    a = speculative_generate(target_model, partial_draft, PROMPT, seed=123, **kwargs).tokens
    b = speculative_generate(target_model, partial_draft, PROMPT, seed=123, **kwargs).tokens
    c = speculative_generate(target_model, partial_draft, PROMPT, seed=124, **kwargs).tokens
    d = speculative_generate(target_model, partial_draft, PROMPT, seed=123, lenience=1.0, **kwargs).tokens
    assert a == b == d
    assert a != c


def test_lenience_raises_acceptance(target_model, partial_draft):
    kwargs = dict(max_new_tokens=80, gamma=4, temperature=1.0, seed=5)
    exact = speculative_generate(target_model, partial_draft, PROMPT, **kwargs).stats.acceptance_rate
    lossy = speculative_generate(target_model, partial_draft, PROMPT, lenience=0.2, **kwargs).stats.acceptance_rate
    assert lossy > exact + 0.1


def test_reference_sampling_is_seeded(target_model):
    kwargs = dict(max_new_tokens=20, temperature=1.0)
    assert reference(target_model, 20, seed=1, temperature=1.0) == reference(target_model, 20, seed=1, temperature=1.0)
    assert autoregressive_generate(target_model, PROMPT, seed=1, **kwargs).tokens != \
        autoregressive_generate(target_model, PROMPT, seed=2, **kwargs).tokens


# ----------------------------------------------------------------------------- vocabularies


def test_mismatched_vocabularies_name_both_sizes(target_model):
    other = tiny_llama(5, vocab_size=32)
    with pytest.raises(DistillSpecError, match="target has 64 output rows, the draft 32"):
        speculative_generate(target_model, other, PROMPT, max_new_tokens=5)


def test_padded_draft_vocabulary_is_tolerated_when_it_covers_the_tokenizer(target_model):
    padded = tiny_llama(6, vocab_size=72)  # 8 padding rows past a 64-token tokenizer
    result = speculative_generate(target_model, padded, PROMPT, max_new_tokens=12, tokenizer_vocab_size=64)
    assert result.tokens == reference(target_model, 12)
    short_target = tiny_llama(6, vocab_size=56)  # cannot cover a 60-token tokenizer
    with pytest.raises(DistillSpecError, match="target has 56 output rows, the draft 72 and the tokenizer has 60"):
        speculative_generate(short_target, padded, PROMPT, max_new_tokens=5, tokenizer_vocab_size=60)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gamma=-1), "gamma must be an integer >= 1"),
        (dict(gamma=0, adaptive_gamma="cost-model"), "gamma must be an integer >= 1"),
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(temperature=1.0, top_p=1.2), r"top_p must be in \(0, 1\]"),
        (dict(lenience=1.5), r"lenience epsilon must be in \(0, 1\]"),
        (dict(lenience=0.0), r"lenience epsilon must be in \(0, 1\]"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(max_new_tokens=251), "exceeds the model's context of 256 tokens"),
    ],
)
def test_bad_options_get_clear_errors(target_model, unrelated_draft, kwargs, message):
    kwargs = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(DistillSpecError, match=message):
        speculative_generate(target_model, unrelated_draft, PROMPT, **kwargs)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "the prompt is empty"),
        (torch.tensor([], dtype=torch.long), "the prompt is empty"),
        (list(range(60)) * 5, "the prompt has 300 tokens but the model's context is 256"),
        (torch.zeros(2, 4, dtype=torch.long), "batch size 2"),
        ([1, 2, 999], r"outside the vocabulary 0\.\.63"),
    ],
)
def test_bad_prompts_get_clear_errors(target_model, unrelated_draft, prompt, message):
    with pytest.raises(DistillSpecError, match=message):
        speculative_generate(target_model, unrelated_draft, prompt, max_new_tokens=5)
    with pytest.raises(DistillSpecError, match=message):
        autoregressive_generate(target_model, prompt, max_new_tokens=5)


def test_tensor_prompts_are_accepted(target_model, unrelated_draft):
    as_list = speculative_generate(target_model, unrelated_draft, PROMPT, max_new_tokens=6).tokens
    as_1d = speculative_generate(target_model, unrelated_draft, torch.tensor(PROMPT), max_new_tokens=6).tokens
    as_2d = speculative_generate(target_model, unrelated_draft, torch.tensor([PROMPT]), max_new_tokens=6).tokens
    assert as_list == as_1d == as_2d


# ----------------------------------------------------------------------------- target log-likelihood


def _teacher_forced_nll(target, prompt, tokens):
    """Mean -log p_target(token) of an output, from one fresh forward over prompt + output."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = target(ids).logits[0, len(prompt) - 1:-1]
    return float(-sampling.token_log_likelihoods(logits, torch.tensor(tokens)).mean())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_target_nll_matches_a_teacher_forced_pass(target_model, partial_draft, temperature):
    """Every emitted token is scored by the target row that predicted it (rows not shifted)."""
    for result in (autoregressive_generate(target_model, PROMPT, max_new_tokens=17, temperature=temperature, seed=3,
                                           score_target_nll=True),
                   speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=17, gamma=3,
                                        temperature=temperature, seed=3, score_target_nll=True)):
        assert result.stats.target_nll_per_token == pytest.approx(
            _teacher_forced_nll(target_model, PROMPT, result.tokens), rel=1e-4)


def test_lenience_raises_target_nll(target_model, unrelated_draft):
    """Lossy acceptance lets through tokens the target finds unlikely; exact sampling does not."""
    def mean_nll(lenience):
        values = [speculative_generate(target_model, unrelated_draft, PROMPT, max_new_tokens=30, gamma=4,
                                       temperature=1.0, seed=seed, lenience=lenience,
                                       score_target_nll=True).stats.target_nll_per_token
                  for seed in range(8)]
        return sum(values) / len(values)

    assert mean_nll(0.05) > mean_nll(None) + 0.1


def test_token_log_likelihoods_on_known_logits():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    values = sampling.token_log_likelihoods(logits, torch.tensor([1, 2]))
    torch.testing.assert_close(values, torch.log(torch.tensor([0.25, 0.8])))


def test_target_nll_is_opt_in_and_kept_out_of_the_clock(target_model, partial_draft):
    plain = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=12, gamma=3).stats
    assert plain.target_nll_per_token is None and plain.scoring_seconds == 0.0
    scored = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=12, gamma=3,
                                  score_target_nll=True).stats
    assert scored.scoring_seconds > 0.0
    assert scored.total_seconds < sum(scored.draft_seconds_per_step) + sum(scored.target_seconds_per_step) + \
        scored.scoring_seconds  # the score's time is not in the total


# ----------------------------------------------------------------------------- drafters and models


def test_padded_vocabulary_drafter_is_reconciled_in_the_loop(target_model):
    """The path the CLI uses: a ModelDrafter (not a bare model) with 8 padding rows."""
    padded = ModelDrafter(tiny_llama(6, vocab_size=72))
    assert padded.vocab_size == 72
    for temperature in (0.0, 1.0):
        result = speculative_generate(target_model, padded, PROMPT, max_new_tokens=12, tokenizer_vocab_size=64,
                                      temperature=temperature, seed=0)
        assert len(result.tokens) == 12 and max(result.tokens) < 64
    assert speculative_generate(target_model, padded, PROMPT, max_new_tokens=12,
                                tokenizer_vocab_size=64).tokens == reference(target_model, 12)
    with pytest.raises(DistillSpecError, match="pass tokenizer_vocab_size"):
        speculative_generate(target_model, padded, PROMPT, max_new_tokens=5)


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_sliding_window_models_decode_exactly_past_the_window_with_rejections(family):
    from conftest import perturbed_copy, tiny_gemma3, tiny_mistral

    make = tiny_gemma3 if family == "gemma3" else tiny_mistral
    target = make(11)
    draft = perturbed_copy(target, scale=0.05, seed=3)
    expected = autoregressive_generate(target, PROMPT, max_new_tokens=60).tokens
    for gamma in (2, 5):
        result = speculative_generate(target, draft, PROMPT, max_new_tokens=60, gamma=gamma)
        assert result.tokens == expected
        assert 0 < result.stats.accepted < result.stats.drafted  # rollbacks happened past the window


class KnownAcceptanceDrafter:
    """Proposes the target's greedy continuation, each token right with probability `alpha`
    (else a wrong one), taking `seconds_per_token` to do so: a draft with known alpha and cost."""

    vocab_size = None

    def __init__(self, continuation, prompt_len, alpha, seconds_per_token, seed=0):
        import random

        self.continuation, self.prompt_len = continuation, prompt_len
        self.alpha, self.seconds_per_token = alpha, seconds_per_token
        self.rng = random.Random(seed)

    def session(self, vocab_size=None):
        return self

    def propose(self, context, gamma, sampling, generator):
        import time

        from distillspec.engine.drafters import DraftProposal

        start = len(context) - self.prompt_len
        right = self.continuation[start:start + gamma]
        tokens = [t if self.rng.random() < self.alpha else (t + 1) % 64 for t in right]
        time.sleep(self.seconds_per_token * len(tokens))
        return DraftProposal(torch.tensor(tokens, dtype=torch.long), None)


class ModeledCostGamma(CostModelGamma):
    """The cost-model policy fed modeled seconds instead of the loop's clock: a verification
    pass costs `step * (1 + slope * drafted)`, a drafted token `c * step`. The loop's counts
    (drafted, accepted, prefill, catch-up) still reach the policy unchanged, so this tests the
    loop-policy wiring end to end without depending on ~1-ms wall-clock passes (which a
    loaded VM's steal time skewed for whole runs in CI)."""

    def __init__(self, gamma, c, slope=0.02, step=1e-3, **kwargs):
        super().__init__(gamma, **kwargs)
        self.c, self.slope, self.step = c, slope, step

    def update(self, report):
        from dataclasses import replace

        modeled = replace(report, verify_seconds=self.step * (1 + self.slope * report.drafted),
                          draft_seconds=self.c * self.step * (report.draft_tokens_fed or report.drafted))
        super().update(modeled)


def test_cost_model_gamma_drafts_long_blocks_for_a_free_accurate_draft(target_model):
    continuation = reference(target_model, 120)
    drafter = KnownAcceptanceDrafter(continuation, len(PROMPT), alpha=0.97, seconds_per_token=0.0)
    policy = ModeledCostGamma(2, c=0.01, max_gamma=10)
    result = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=120, gamma=2,
                                  adaptive_gamma=policy)
    assert result.tokens == continuation
    chosen = result.stats.gamma_history[2:-1]  # after the first updates; the last step is cut to the tokens left
    # best_gamma(0.97, 0.01, 10) with verification growing 2 % a token is the longest block
    assert sum(g >= 8 for g in chosen) >= 0.8 * len(chosen), chosen
    # negative control: the same draft at 3 target steps a token never pays, so drafting stops
    costly = ModeledCostGamma(2, c=3.0, max_gamma=10)
    costly_stats = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=60, gamma=2,
                                        adaptive_gamma=costly).stats
    assert costly_stats.gamma_history[2:-1].count(0) >= 0.8 * len(costly_stats.gamma_history[2:-1])


@pytest.mark.slow  # a drafter that sleeps to look slow
def test_cost_model_gamma_stops_drafting_for_a_slow_poor_draft_and_does_not_probe(target_model):
    """c is 5+ target steps here: no gamma pays even for a draft right 95 % of the time
    (`drafting_can_pay`), so after its first blocks it runs the target alone and spends
    nothing on probes (each also feeds the draft every skipped token). Probing where a
    better alpha could pay is tested on the policy itself (test_gamma.py)."""
    continuation = reference(target_model, 80)
    drafter = KnownAcceptanceDrafter(continuation, len(PROMPT), alpha=0.3, seconds_per_token=0.02)
    result = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=80, gamma=6,
                                  adaptive_gamma="cost-model", max_gamma=10)
    assert result.tokens == continuation  # target-only steps keep greedy output exact
    chosen = result.stats.gamma_history[2:-1]  # after the first updates
    assert chosen.count(0) >= 0.8 * len(chosen)
    assert chosen[-40:] == [0] * 40  # no probe block late in the reply
    # negative control: with gamma 0 ruled out it keeps drafting one token a step
    fixed_floor = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=40, gamma=6,
                                       adaptive_gamma=CostModelGamma(6, max_gamma=10, min_gamma=1))
    assert set(fixed_floor.stats.gamma_history[2:-1]) == {1}




def test_a_fixed_gamma_of_zero_is_the_target_alone(target_model, partial_draft):
    alone = autoregressive_generate(target_model, PROMPT, max_new_tokens=20, eos_token_id=())
    result = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=20, gamma=0, eos_token_id=())
    assert result.tokens == alone.tokens and result.stats.drafted == 0 and result.stats.steps == 20
    drafting = speculative_generate(target_model, partial_draft, PROMPT, max_new_tokens=20, gamma=2, eos_token_id=())
    assert drafting.stats.drafted > 0  # control: the same call with gamma 2 drafts
