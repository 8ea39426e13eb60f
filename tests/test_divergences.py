"""Divergences against naive references written straight from their definitions."""

import math

import pytest
import torch

from distillspec.distill.divergences import (
    cross_entropy_per_token,
    divergence_fn,
    forward_kl_per_token,
    jsd_per_token,
    reverse_kl_per_token,
    sequence_loss,
    tvd_per_token,
)
from distillspec.errors import DistillSpecError


def softmax_list(logits):
    exps = [math.exp(x) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def naive_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def naive(name, target_logits, draft_logits, beta=0.5):
    p, q = softmax_list(target_logits), softmax_list(draft_logits)
    if name == "fkl":
        return naive_kl(p, q)
    if name == "rkl":
        return naive_kl(q, p)
    if name == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    return (beta * naive_kl(p, m) + (1 - beta) * naive_kl(q, m)) / (beta * (1 - beta))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, 7, generator=g) * 2, torch.randn(3, 5, 7, generator=g) * 2


@pytest.mark.parametrize("name, beta", [("fkl", 0.5), ("rkl", 0.5), ("tvd", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)])
def test_matches_naive_reference(logits, name, beta):
    target, draft = logits
    got = divergence_fn(name, beta)(target, draft)
    assert got.shape == (3, 5)
    for b in range(3):
        for t in range(5):
            expected = naive(name, target[b, t].tolist(), draft[b, t].tolist(), beta)
            assert got[b, t].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd", "jsd"])
def test_zero_on_equal_inputs(logits, name):
    target, _ = logits
    assert divergence_fn(name)(target, target.clone()).abs().max() < 1e-5


def test_jsd_is_symmetric_at_half(logits):
    target, draft = logits
    assert torch.allclose(jsd_per_token(target, draft, 0.5), jsd_per_token(draft, target, 0.5), atol=1e-5)
    assert not torch.allclose(jsd_per_token(target, draft, 0.2), jsd_per_token(draft, target, 0.2), atol=1e-3)


def test_jsd_is_continuous_with_kl_limits(logits):
    target, draft = logits
    fkl, rkl = forward_kl_per_token(target, draft), reverse_kl_per_token(target, draft)
    assert torch.equal(jsd_per_token(target, draft, 0.0), fkl)
    assert torch.equal(jsd_per_token(target, draft, 1.0), rkl)
    assert torch.allclose(jsd_per_token(target, draft, 1e-4), fkl, rtol=2e-2, atol=1e-3)
    assert torch.allclose(jsd_per_token(target, draft, 1 - 1e-4), rkl, rtol=2e-2, atol=1e-3)


def test_bounds(logits):
    target, draft = logits
    tvd = tvd_per_token(target, draft)
    assert (tvd >= 0).all() and (tvd <= 1).all()
    assert (forward_kl_per_token(target, draft) >= 0).all()
    plain_jsd = jsd_per_token(target, draft, 0.5) * 0.25  # the usual JSD, bounded by log 2
    assert (plain_jsd >= -1e-7).all() and (plain_jsd <= math.log(2) + 1e-6).all()
    # Pinsker: TVD <= sqrt(KL / 2)
    assert (tvd <= torch.sqrt(forward_kl_per_token(target, draft) / 2) + 1e-6).all()


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd", "jsd"])
def test_gradients_are_finite_even_for_extreme_logits(name):
    target = torch.tensor([[[50.0, -50.0, 0.0, -30.0]]])
    draft = torch.tensor([[[-40.0, 40.0, 0.0, 10.0]]], requires_grad=True)
    loss = divergence_fn(name)(target, draft).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(draft.grad).all()
    assert draft.grad.abs().sum() > 0


def test_sequence_loss_averages_per_sequence_and_respects_mask():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # sequence means 2.0 and 4.0, not the token mean (1+2+3+4)/4
    assert sequence_loss(per_token, mask).item() == pytest.approx(3.0)
    assert sequence_loss(per_token, torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])).item() == pytest.approx(2.0)
    assert sequence_loss(per_token, torch.zeros(2, 4)).item() == 0.0


def test_cross_entropy_baseline():
    draft = torch.tensor([[[0.0, math.log(3.0)]]])
    assert cross_entropy_per_token(draft, torch.tensor([[1]])).item() == pytest.approx(-math.log(0.75))


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_beta_out_of_range_is_named(beta):
    with pytest.raises(DistillSpecError, match=r"JSD beta must be in \[0, 1\]"):
        divergence_fn("jsd", beta)


def test_unknown_divergence_is_named():
    with pytest.raises(DistillSpecError, match="unknown divergence 'kl2'"):
        divergence_fn("kl2")


def test_heldout_acceptance_is_measured_on_target_text_with_draft_text_as_diagnostic():
    """Decoding scores the draft on target-distributed prefixes, so the headline number must
    come from the target's samples; the draft's own samples give the diagnostic keys."""
    from conftest import tiny_llama

    from distillspec.distill.evaluate import acceptance_on_text, heldout_expected_acceptance, sample_eval_text
    from distillspec.data.tokenize import TokenizedExample

    target, draft = tiny_llama(0), tiny_llama(1)
    items = [TokenizedExample([3, 17, 42, 5], None), TokenizedExample([9, 11, 2], None)]
    metrics = heldout_expected_acceptance(target, draft, items, 12, eos_ids=set(), pad_id=0, seed=5)
    on_target = acceptance_on_text(target, draft, sample_eval_text(target, items, 12, set(), 0, seed=5))
    on_draft = acceptance_on_text(target, draft, sample_eval_text(draft, items, 12, set(), 0, seed=5))
    assert on_target["expected_acceptance"] != pytest.approx(on_draft["expected_acceptance"])  # the test can tell
    assert metrics["expected_acceptance"] == pytest.approx(on_target["expected_acceptance"])
    assert metrics["expected_acceptance_on_draft_text"] == pytest.approx(on_draft["expected_acceptance"])
    assert heldout_expected_acceptance(target, target, items, 12, set(), 0, seed=5)["expected_acceptance"] == (
        pytest.approx(1.0))


def test_kept_target_logits_give_the_same_acceptance_without_a_target_pass():
    """score_text keeps the target's logits so that many drafts are measured on one text for
    one target pass; the numbers must equal those of scoring the target each time."""
    from conftest import tiny_llama

    from distillspec.data.tokenize import TokenizedExample
    from distillspec.distill.evaluate import acceptance_on_text, sample_eval_text, score_text

    target, draft = tiny_llama(0), tiny_llama(1)
    items = [TokenizedExample([3, 17, 42, 5], None), TokenizedExample([9, 11, 2], None)]
    text = sample_eval_text(target, items, 12, set(), 0, seed=5)
    fresh = acceptance_on_text(target, draft, text)
    scored = score_text(target, text)
    calls = {"n": 0}
    hook = target.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        kept = acceptance_on_text(target, draft, scored)
        assert calls["n"] == 0  # the target did not run
        acceptance_on_text(target, draft, text)
        assert calls["n"] > 0  # negative control: without kept logits it does
    finally:
        hook.remove()
    assert kept == pytest.approx(fresh)
    assert 0 < fresh["expected_acceptance"] < 1


def test_a_truncated_head_is_scored_as_the_engine_samples_it():
    """Ids outside a draft's truncated head have probability 0 in the engine, so the text
    measure must give them 0 too: the target as its own draft loses exactly the mass outside."""
    from conftest import tiny_llama

    from distillspec.data.tokenize import TokenizedExample
    from distillspec.distill.evaluate import acceptance_on_text, sample_eval_text, score_text

    target = tiny_llama(0)
    items = [TokenizedExample([3, 17, 42, 5], None), TokenizedExample([9, 11, 2], None)]
    text = score_text(target, sample_eval_text(target, items, 12, set(), 0, seed=5))
    head = list(range(32))
    assert acceptance_on_text(target, target, text, list(range(64)))["expected_acceptance"] == pytest.approx(1.0)
    truncated = acceptance_on_text(target, target, text, head)["expected_acceptance"]
    probs = torch.cat([logits.softmax(-1) for logits in text.target_logits])
    assert truncated == pytest.approx(probs[:, head].sum(-1).mean().item(), abs=1e-5)
    assert truncated < 0.9
