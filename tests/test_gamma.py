"""Gamma schedules and the cost-model arithmetic."""

import pytest

from distillspec.errors import DistillSpecError
from distillspec.gamma import (
    CostModelGamma,
    HeuristicGamma,
    StepReport,
    best_gamma,
    expected_block_efficiency,
    expected_speedup,
    make_gamma_policy,
)


def test_block_efficiency_formula_on_known_values():
    assert expected_block_efficiency(0.0, 4) == 1.0
    assert expected_block_efficiency(1.0, 4) == 5.0
    assert expected_block_efficiency(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_speedup(0.5, 2, 0.25) == pytest.approx(1.75 / 1.5)


def test_best_gamma_grows_with_acceptance_and_shrinks_with_cost():
    assert best_gamma(0.95, 0.01, 16) > best_gamma(0.6, 0.01, 16)
    assert best_gamma(0.8, 0.01, 16) > best_gamma(0.8, 0.3, 16)
    assert best_gamma(0.05, 0.5, 16) == 1


def test_heuristic_grows_on_full_acceptance_and_shrinks_on_rejection():
    policy = HeuristicGamma(4, max_gamma=5)
    policy.update(StepReport(4, 4, 0.0, 4, 0.0))
    assert policy.next_gamma() == 5
    policy.update(StepReport(5, 5, 0.0, 5, 0.0))
    assert policy.next_gamma() == 5  # capped
    for _ in range(10):
        policy.update(StepReport(5, 0, 0.0, 5, 0.0))
    assert policy.next_gamma() == 1  # floor


def test_cost_model_estimates_alpha_without_truncation_bias():
    policy = CostModelGamma(4, max_gamma=8)
    # three steps: accept 2 then reject; accept all 4; accept 0 then reject
    for accepted in [2, 4, 0]:
        policy.update(StepReport(4, accepted, 0.01 * 4, 4, 0.1))
    assert policy.alpha() == pytest.approx(6 / 8)  # 6 successes, 2 failures
    assert policy.draft_to_verify_ratio() == pytest.approx(0.1)
    assert policy.next_gamma() == best_gamma(0.75, 0.1, 8)


def test_cost_model_with_free_drafter_and_perfect_acceptance_drafts_the_most():
    policy = CostModelGamma(2, max_gamma=12)
    for _ in range(5):
        policy.update(StepReport(2, 2, 0.0, 0, 0.1))
    assert policy.next_gamma() == 12


@pytest.mark.parametrize("gamma", [0, -1, 2.5])
def test_bad_gamma_is_named(gamma):
    with pytest.raises(DistillSpecError, match="gamma must be an integer >= 1"):
        make_gamma_policy(gamma, None)


def test_unknown_adaptive_mode_is_named():
    with pytest.raises(DistillSpecError, match="unknown adaptive_gamma 'magic'"):
        make_gamma_policy(4, "magic")
