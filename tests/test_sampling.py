"""The pure verification math: warping, rejection sampling, lenience."""

import math

import pytest
import torch

from distillspec.engine import sampling
from distillspec.errors import DistillSpecError
from distillspec.engine.sampling import (
    Lenience,
    SamplingConfig,
    expected_acceptance,
    residual_distribution,
    verify_block,
    warp_logits,
)

from conftest import matches_distribution

V = 6


def random_probs(seed: int, shape=(V,), sharpness: float = 1.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=generator) * sharpness, dim=-1)


def emitted_tokens(draft_probs, target_probs, n, seed, gamma=1, lenience=None, deterministic_token=None):
    """Run n independent rows of one verification; return (emitted tokens [n, G+1], -1 past the end; result).

    draft_probs: [G, V] and target_probs: [G + 1, V], the same distributions in every row.
    """
    generator = torch.Generator().manual_seed(seed)
    if deterministic_token is None:
        draft_tokens = torch.stack(
            [torch.multinomial(draft_probs[g], n, replacement=True, generator=generator) for g in range(gamma)],
            dim=1,
        )
        batch_draft_probs = draft_probs.expand(n, gamma, V)
    else:
        draft_tokens = torch.full((n, gamma), deterministic_token)
        batch_draft_probs = None
    result = verify_block(draft_tokens, batch_draft_probs, target_probs.expand(n, gamma + 1, V), generator, lenience)
    full = torch.cat([draft_tokens, torch.full((n, 1), -1)], dim=1)
    full[torch.arange(gamma + 1)[None, :] > result.num_accepted[:, None]] = -1  # never emitted
    full[torch.arange(n), result.num_accepted] = result.next_tokens
    return full, result


# ----------------------------------------------------------------------------- warping


def test_greedy_warp_is_one_hot_on_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    assert torch.equal(warp_logits(logits, SamplingConfig(0.0)), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(warp_logits(logits, SamplingConfig(2.0)), torch.softmax(logits / 2.0, -1))


def test_top_k_keeps_k_largest():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    probs = warp_logits(logits, SamplingConfig(1.0, top_k=2))
    expected = torch.softmax(torch.tensor([3.0, 2.0]), -1)
    assert torch.allclose(probs, torch.tensor([0.0, expected[0], 0.0, expected[1]]))


def test_top_p_keeps_smallest_nucleus_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    kept = warp_logits(logits, SamplingConfig(1.0, top_p=0.8))
    assert torch.allclose(kept, torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8)
    # a p just above 0.8 needs the third token too
    kept = warp_logits(logits, SamplingConfig(1.0, top_p=0.81))
    assert torch.allclose(kept, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    # the top token alone is always kept
    assert torch.allclose(warp_logits(logits, SamplingConfig(1.0, top_p=0.01)), torch.tensor([1.0, 0, 0, 0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
        (dict(temperature=1.0, top_p=0.0), "top_p must be in (0, 1]"),
        (dict(temperature=1.0, top_p=1.5), "top_p must be in (0, 1]"),
        (dict(temperature=1.0, top_k=0), "top_k must be an integer >= 1"),
    ],
)
def test_bad_sampling_options_are_named(kwargs, message):
    with pytest.raises(DistillSpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("epsilon", [0.0, -0.1, 1.5])
def test_lenience_out_of_range_is_rejected(epsilon):
    with pytest.raises(DistillSpecError, match=r"lenience epsilon must be in \(0, 1\]"):
        Lenience(epsilon)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("gamma", [1, 3])
def test_emitted_tokens_follow_the_target_distribution(gamma):
    draft = torch.stack([random_probs(10 + g) for g in range(gamma)])
    target = torch.stack([random_probs(20 + g) for g in range(gamma + 1)])
    full, result = emitted_tokens(draft, target, n=60_000, seed=1, gamma=gamma)
    assert matches_distribution(full[:, 0], target[0])
    # every later position, up to the last drafted one and the bonus token (position gamma),
    # follows the target there among the rows whose block reached it
    for position in range(1, gamma + 1):
        reached = full[:, position] >= 0
        assert reached.sum() > 2_000, position
        assert matches_distribution(full[reached, position], target[position]), position
    assert (result.num_accepted == gamma).sum() > 2_000  # bonus tokens were drawn


def test_broken_verifier_that_always_accepts_fails_the_same_test(monkeypatch):
    """Negative control: the test above must be able to fail."""
    draft, target = random_probs(10)[None], torch.stack([random_probs(20), random_probs(21)])
    monkeypatch.setattr(sampling, "acceptance_probability", lambda t, d, lenience=None: torch.ones_like(t))
    full, _ = emitted_tokens(draft, target, n=60_000, seed=1)
    assert not matches_distribution(full[:, 0], target[0])
    assert matches_distribution(full[:, 0], draft[0])  # it emits the draft's distribution


def test_deterministic_draft_follows_the_target_distribution():
    target = torch.stack([random_probs(30), random_probs(31)])
    for token in range(V):
        full, _ = emitted_tokens(None, target, n=20_000, seed=token, deterministic_token=token)
        assert matches_distribution(full[:, 0], target[0])


def test_acceptance_rate_matches_sum_of_minimums():
    draft, target = random_probs(40)[None], torch.stack([random_probs(41), random_probs(42)])
    n = 40_000
    _, result = emitted_tokens(draft, target, n=n, seed=3)
    beta = float(expected_acceptance(target[0], draft[0]))
    observed = result.num_accepted.float().mean().item()
    half_width = 4 * math.sqrt(beta * (1 - beta) / n)  # ~4 sigma binomial interval
    assert abs(observed - beta) < half_width
    assert 0.1 < beta < 0.9  # the check is informative


def test_greedy_verification_accepts_exactly_the_argmax_prefix():
    target = torch.nn.functional.one_hot(torch.tensor([[2, 5, 1, 3]]), V).float()  # [1, 4, V]
    draft_tokens = torch.tensor([[2, 5, 4]])
    draft_probs = torch.nn.functional.one_hot(draft_tokens, V).float()
    result = verify_block(draft_tokens, draft_probs, target, torch.Generator().manual_seed(0))
    assert result.num_accepted.tolist() == [2]
    assert result.next_tokens.tolist() == [1]  # the target's argmax at the rejection
    all_right = torch.tensor([[2, 5, 1]])
    result = verify_block(all_right, torch.nn.functional.one_hot(all_right, V).float(), target,
                          torch.Generator().manual_seed(0))
    assert result.num_accepted.tolist() == [3] and result.next_tokens.tolist() == [3]  # bonus


def test_equal_and_disjoint_distributions_are_safe():
    equal = random_probs(50)
    full, result = emitted_tokens(equal[None], torch.stack([equal, equal]), n=5000, seed=0)
    assert result.num_accepted.eq(1).all()  # never rejects an identical draft
    disjoint_draft = torch.tensor([0.5, 0.5, 0, 0, 0, 0])
    disjoint_target = torch.tensor([0, 0, 0.2, 0.3, 0.5, 0])
    full, result = emitted_tokens(disjoint_draft[None], torch.stack([disjoint_target] * 2), n=5000, seed=0)
    assert result.num_accepted.eq(0).all()
    assert torch.isin(full[:, 0], torch.tensor([2, 3, 4])).all()


def test_residual_falls_back_to_target_when_empty():
    probs = random_probs(60)[None]
    assert torch.allclose(residual_distribution(probs, probs), probs)


def test_gamma_zero_samples_from_the_target():
    target = random_probs(70)[None, None].expand(20_000, 1, V)
    result = verify_block(torch.empty(20_000, 0, dtype=torch.long), None, target, torch.Generator().manual_seed(0))
    assert result.num_accepted.eq(0).all()
    assert matches_distribution(result.next_tokens, target[0, 0])


# ----------------------------------------------------------------------------- lenience


def test_lenience_one_is_exactly_lossless():
    draft, target = random_probs(80)[None], torch.stack([random_probs(81), random_probs(82)])
    for function in ["linear", "square", "power"]:
        lossless, _ = emitted_tokens(draft, target, n=2000, seed=5)
        lenient, _ = emitted_tokens(draft, target, n=2000, seed=5, lenience=Lenience(1.0, function))
        assert torch.equal(lossless, lenient)


@pytest.mark.parametrize("function", ["linear", "square", "power"])
def test_lower_epsilon_accepts_more(function):
    draft, target = random_probs(90)[None], torch.stack([random_probs(91), random_probs(92)])
    rates = []
    for epsilon in [1.0, 0.5, 0.1]:
        _, result = emitted_tokens(draft, target, n=20_000, seed=6, lenience=Lenience(epsilon, function))
        rates.append(result.num_accepted.float().mean().item())
    assert rates[0] < rates[1] < rates[2]


def test_unknown_lenience_function_is_named():
    with pytest.raises(DistillSpecError, match="unknown lenience function 'cubic'"):
        Lenience(0.5, "cubic")
