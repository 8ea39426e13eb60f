"""Prompt lookup first, a draft model elsewhere (`LookupFirstDrafter`): exact output, each
kind's blocks sized by its own policy, stats that keep the two apart, and the specs and
options that name it."""

import argparse

import pytest
import torch

from distillspec.engine import sampling
from distillspec.engine.drafters import LookupFirstDrafter, ModelDrafter, PromptLookupDrafter, model_drafter_of
from distillspec.engine.gamma import RAMP_MAX_GAMMA, StepReport
from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.engine.sampling import SamplingConfig
from distillspec.engine.stats import GenerationStats, pool_stats
from distillspec.errors import DistillSpecError
from distillspec.models.drafts import load_drafter, model_spec_of
from distillspec.models.pair import draft_spec

from conftest import matches_distribution
from test_decoding import SMALL_V, exact_first_two

PROMPT = [3, 17, 42, 5, 9, 11]
#: a prompt whose tail ("12 5 6") occurs earlier: the first block is the lookup's
REPEATING = PROMPT + [5, 6, 7, 8, 9, 10, 11, 12] * 3 + [5, 6]


class RecordingPolicy:
    """A fixed gamma that keeps every report it hears."""

    def __init__(self, gamma: int):
        self.gamma, self.reports = gamma, []

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report: StepReport) -> None:
        self.reports.append(report)


def lookup_first(draft) -> LookupFirstDrafter:
    return LookupFirstDrafter(ModelDrafter(draft))


def reference(target, length, prompt):
    return autoregressive_generate(target, prompt, max_new_tokens=length).tokens


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_output_is_the_targets_with_both_kinds_of_block(target_model, partial_draft, gamma):
    result = speculative_generate(target_model, lookup_first(partial_draft), REPEATING, max_new_tokens=40,
                                  gamma=gamma)
    assert result.tokens == reference(target_model, 40, REPEATING)
    stats = result.stats
    assert 0 < stats.looked_up < stats.drafted  # the lookup drafted some blocks, the model the others
    assert stats.accepted + stats.steps == 40


def test_a_model_draft_alone_looks_nothing_up(target_model, partial_draft):
    """Negative control: the same prompt with the model draft alone, and with lookup alone."""
    model_only = speculative_generate(target_model, ModelDrafter(partial_draft), REPEATING, max_new_tokens=40, gamma=3)
    assert model_only.stats.looked_up == 0 and model_only.stats.drafted > 0
    lookup_only = speculative_generate(target_model, PromptLookupDrafter(), REPEATING, max_new_tokens=40, gamma=3)
    assert lookup_only.stats.looked_up == 0  # the count is of lookup blocks beside a model


def test_each_policy_hears_only_of_its_own_blocks(target_model, partial_draft):
    model_policy = RecordingPolicy(3)
    result = speculative_generate(target_model, lookup_first(partial_draft), REPEATING, max_new_tokens=40,
                                  adaptive_gamma=model_policy)
    stats = result.stats
    heard = sum(report.drafted for report in model_policy.reports)
    assert heard == stats.drafted - stats.looked_up > 0
    assert len(model_policy.reports) == stats.steps - sum(1 for n in stats.looked_up_per_step if n)
    lookup_blocks = [g for g, n in zip(stats.gamma_history, stats.looked_up_per_step) if n]
    assert lookup_blocks and lookup_blocks[0] == 1  # the ramp's first block
    assert all(g in (1, 2, 4, 8, 16, RAMP_MAX_GAMMA) for g in lookup_blocks)


def test_lookup_drafts_where_the_model_policy_says_gamma_zero(target_model, partial_draft):
    """Where no model block pays (the cost model's gamma 0), lookup still drafts on text that repeats."""
    result = speculative_generate(target_model, lookup_first(partial_draft), REPEATING, max_new_tokens=30, gamma=0)
    assert result.tokens == reference(target_model, 30, REPEATING)
    assert result.stats.drafted == result.stats.looked_up > 0
    alone = speculative_generate(target_model, ModelDrafter(partial_draft), REPEATING, max_new_tokens=30, gamma=0)
    assert alone.stats.drafted == 0  # control


def sample_first_two(target, drafter, prompt, n):
    outs, looked_up, drafted = [], 0, 0
    for seed in range(n):
        result = speculative_generate(target, drafter, prompt, max_new_tokens=3, gamma=2, seed=seed, temperature=1.0)
        outs.append(result.tokens)
        looked_up += result.stats.looked_up
        drafted += result.stats.drafted
    return torch.tensor([o[0] for o in outs]), torch.tensor([o[1] for o in outs]), looked_up, drafted


def test_sampled_tokens_follow_the_target_distribution(small_models):
    target, draft = small_models
    prompt = [1, 2, 3, 4, 1, 2, 3]  # lookup proposes 4 first; after "2 3 4" it proposes again
    assert max(prompt) < SMALL_V
    first, second = exact_first_two(target, prompt, SamplingConfig(1.0))
    got_first, got_second, looked_up, drafted = sample_first_two(target, lookup_first(draft), prompt, n=1500)
    assert 0 < looked_up < drafted
    assert matches_distribution(got_first, first)
    assert matches_distribution(got_second, second)


def test_a_broken_verifier_fails_the_distribution_test(small_models, monkeypatch):
    """Negative control: accepting every drafted token makes the first token the lookup's 4."""
    target, draft = small_models
    prompt = [1, 2, 3, 4, 1, 2, 3]
    first, _ = exact_first_two(target, prompt, SamplingConfig(1.0))
    monkeypatch.setattr(sampling, "acceptance_probability", lambda t, d, lenience=None: torch.ones_like(t))
    got_first, _, _, _ = sample_first_two(target, lookup_first(draft), prompt, n=300)
    assert not matches_distribution(got_first, first)
    assert bool((got_first == 4).all())


@pytest.fixture(scope="module")
def small_models():
    from conftest import tiny_llama

    return tiny_llama(20, vocab_size=SMALL_V), tiny_llama(21, vocab_size=SMALL_V)


def test_the_draft_cost_counts_model_blocks_only():
    stats = GenerationStats(prefill_steps=1)
    stats.record_step(2, 2, 2, 2, 0.5, 1.0)  # the prefill step
    stats.record_step(3, 1, 3, 3, 0.3, 1.0)  # a model block: 0.1 s a token
    stats.record_step(16, 16, 16, 0, 0.001, 1.0, looked_up=True)  # a lookup block: free
    assert stats.looked_up == 16
    assert stats.draft_seconds_per_token == pytest.approx(0.1)
    assert pool_stats([stats, stats]).draft_seconds_per_token == pytest.approx(0.1)
    assert pool_stats([stats]).looked_up == 16


def test_specs_and_options_name_lookup_before_a_model(target_model):
    assert model_spec_of("prompt-lookup+default") == "default"
    assert model_spec_of("prompt-lookup") is None and model_spec_of("layers:0") == "layers:0"
    assert draft_spec("lookup+model", "qwen2.5-coder-0.5b") == "prompt-lookup+qwen2.5-coder-0.5b"
    assert draft_spec("lookup+model", "prompt-lookup+default") == "prompt-lookup+default"
    assert draft_spec("prompt-lookup", "anything") == "prompt-lookup"
    assert draft_spec("lookup+model", "prompt-lookup") == "prompt-lookup"  # lookup alone, not lookup twice
    assert draft_spec("model", "default") == "default"
    with pytest.raises(DistillSpecError, match="unknown drafter 'both'; choose one of model, prompt-lookup"):
        draft_spec("both", "default")
    drafter = load_drafter("prompt-lookup+layers:0", target_model)
    assert isinstance(drafter, LookupFirstDrafter) and isinstance(model_drafter_of(drafter), ModelDrafter)
    with pytest.raises(DistillSpecError, match="after 'prompt-lookup\\+' name a draft model"):
        load_drafter("prompt-lookup+prompt-lookup", target_model)


def test_auto_gamma_is_the_cost_model_for_the_models_blocks():
    from distillspec.cli.argtypes import adaptive_gamma_option

    def resolved(drafter, draft):
        return adaptive_gamma_option(argparse.Namespace(adaptive_gamma="auto", drafter=drafter, draft=draft))

    assert resolved("lookup+model", "default") == "cost-model"
    assert resolved("model", "prompt-lookup+default") == "cost-model"
    assert resolved("prompt-lookup", "default") == "ramp"
    assert resolved("model", "prompt-lookup") == "ramp"


def test_the_sessions_index_answers_as_the_scan_does_as_the_context_grows():
    """The indexed session against the reference scan, on contexts with many repeats (a
    6-token vocabulary), grown a few tokens at a time as the loop grows them; then a context
    that is not the indexed one extended (indexed again), and another n-gram range."""
    import random

    rng = random.Random(0)
    for max_ngram, min_ngram in ((6, 3), (3, 1)):
        drafter = PromptLookupDrafter(max_ngram, min_ngram)
        session, context, checked = drafter.session(), [], 0
        while len(context) < 300:
            context += [rng.randrange(6) for _ in range(rng.randrange(1, 5))]
            gamma = rng.randrange(0, 9)
            assert session.lookup(context, gamma) == drafter.lookup(context, gamma), (len(context), gamma)
            checked += bool(drafter.lookup(context, gamma))
        assert checked > 20  # most steps found a match (the control for an index that never answers)
        other = [rng.randrange(6) for _ in range(120)]  # not an extension of the indexed context
        assert session.lookup(other, 5) == drafter.lookup(other, 5)
        shorter = context[:50]
        assert session.lookup(shorter, 5) == drafter.lookup(shorter, 5)


def test_lookup_sessions_are_apart_per_call(target_model):
    drafter = PromptLookupDrafter()
    first, second = drafter.session(), drafter.session()
    assert first is not second and first.lookup([1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]
    assert second.lookup([4, 5, 6, 7], 2) == []
