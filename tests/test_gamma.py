"""Gamma schedules and the cost-model arithmetic (the figures come from `metrics`)."""

import pytest

from distillspec import metrics
from distillspec.engine.gamma import CostModelGamma, HeuristicGamma, StepReport, VerifyCostLine, best_gamma, \
    make_gamma_policy
from distillspec.errors import DistillSpecError


def test_block_efficiency_formula_on_known_values():
    assert metrics.expected_block_efficiency(0.0, 4) == 1.0
    assert metrics.expected_block_efficiency(1.0, 4) == 5.0
    assert metrics.expected_block_efficiency(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert metrics.expected_speedup(1.75, 2, 0.25) == pytest.approx(1.75 / 1.5)
    assert metrics.predicted_speedup(1.75, 2, 0.25, 2.0) == pytest.approx(1.75 / 2.5)


def test_decode_seconds_per_token_drops_each_first_step():
    # 2 prompts: 10 s in all, first steps took 3 s and 1 s and emitted 4 and 1 tokens, of 25
    assert metrics.decode_seconds_per_token(10.0, 4.0, 25, 5) == pytest.approx(6.0 / 20)
    assert metrics.decode_seconds_per_token(1.0, 1.0, 2, 2) is None  # nothing after the first steps


def test_best_gamma_grows_with_acceptance_and_shrinks_with_cost():
    assert best_gamma(0.95, 0.01, 16) > best_gamma(0.6, 0.01, 16)
    assert best_gamma(0.8, 0.01, 16) > best_gamma(0.8, 0.3, 16)
    assert best_gamma(0.05, 0.5, 16) == 1


def test_best_gamma_shrinks_when_verification_cost_grows_with_gamma():
    flat = best_gamma(0.9, 0.05, 16)
    growing = best_gamma(0.9, 0.05, 16, verify=lambda g: 1.0 + 0.4 * g)  # AVX2-like bf16 verification
    assert growing < flat
    # brute force over the same formula agrees
    speed = {g: metrics.predicted_speedup(metrics.expected_block_efficiency(0.9, g), g, 0.05, 1.0 + 0.4 * g)
             for g in range(1, 17)}
    assert growing == max(speed, key=speed.get)


def test_heuristic_grows_on_full_acceptance_and_shrinks_on_rejection():
    policy = HeuristicGamma(4, max_gamma=5)
    policy.update(StepReport(4, 4, 0.0, 0.0))
    assert policy.next_gamma() == 5
    policy.update(StepReport(5, 5, 0.0, 0.0))
    assert policy.next_gamma() == 5  # capped
    for _ in range(10):
        policy.update(StepReport(5, 0, 0.0, 0.0))
    assert policy.next_gamma() == 1  # floor


def test_verify_cost_line_fits_intercept_and_slope():
    line = VerifyCostLine()
    for gamma, seconds in [(1, 0.12), (2, 0.14), (4, 0.18), (4, 0.18)]:
        line.add(gamma, seconds)
    intercept, slope = line.fit()
    assert intercept == pytest.approx(0.10)
    assert slope == pytest.approx(0.02)
    single = VerifyCostLine()
    single.add(4, 0.2)
    assert single.fit() == (pytest.approx(0.2), 0.0)  # one gamma seen: flat


def test_cost_model_estimates_alpha_without_truncation_bias_and_excludes_prefill():
    policy = CostModelGamma(4, max_gamma=8, memory=1.0)
    # the prefill step is slow (it fed the prompt) and must not count towards costs
    policy.update(StepReport(4, 2, 5.0, 9.0, prefill=True))
    # then: accept 4 (all), accept 0 then reject
    for accepted in [4, 0]:
        policy.update(StepReport(4, accepted, 0.01 * 4, 0.1))
    assert policy.alpha() == pytest.approx(6 / 8)  # 6 successes, 2 failures
    assert policy.cost_ratio() == pytest.approx(0.1)  # 0.01 s per token / 0.1 s per pass (flat line)
    assert policy.next_gamma() == best_gamma(0.75, 0.1, 8)


def test_cost_model_with_free_drafter_and_perfect_acceptance_drafts_the_most():
    policy = CostModelGamma(2, max_gamma=12)
    for _ in range(5):
        policy.update(StepReport(2, 2, 0.0, 0.1))
    assert policy.next_gamma() == 12


@pytest.mark.parametrize("gamma", [0, -1, 2.5])
def test_bad_gamma_is_named(gamma):
    with pytest.raises(DistillSpecError, match="gamma must be an integer >= 1"):
        make_gamma_policy(gamma, None)


def test_unknown_adaptive_mode_is_named():
    with pytest.raises(DistillSpecError, match="unknown adaptive_gamma 'magic'"):
        make_gamma_policy(4, "magic")


def test_best_gamma_zero_only_when_no_gamma_beats_the_target_alone():
    assert best_gamma(0.3, 0.5, 8, verify=lambda g: 1.0 + 0.3 * g, min_gamma=0) == 0
    assert best_gamma(0.9, 0.05, 8, verify=lambda g: 1.0 + 0.3 * g, min_gamma=0) > 0
    assert best_gamma(0.3, 0.5, 8, verify=lambda g: 1.0 + 0.3 * g) == 1  # default floor is 1


def _steps(policy, n, accept, seconds_per_token=0.02, step_seconds=0.1):
    """Feed n steps of a draft accepting `accept(gamma)` tokens; v = 1 + 0.3 gamma."""
    chosen = []
    for _ in range(n):
        gamma = policy.next_gamma()
        chosen.append(gamma)
        policy.update(StepReport(gamma, accept(gamma), seconds_per_token * gamma,
                                 step_seconds * (1 + 0.3 * gamma)))
    return chosen


def _poor_steps(policy, n):
    return _steps(policy, n, accept=lambda gamma: 0)


def test_cost_model_stops_drafting_a_losing_draft_and_probes_at_growing_intervals():
    policy = CostModelGamma(4, max_gamma=8)
    policy.update(StepReport(4, 0, 1.0, 2.0, prefill=True))
    chosen = _poor_steps(policy, 200)
    assert chosen[0] == 1 and chosen[1] == 0  # costs unknown after the prefill: the cheapest block
    drafted_at = [i for i, g in enumerate(chosen) if g > 0]
    gaps = [b - a - 1 for a, b in zip(drafted_at, drafted_at[1:])]
    assert gaps == [8, 16, 32, 64, 64]  # target-only steps between probes


def test_cost_model_returns_to_drafting_when_a_probe_pays():
    policy = CostModelGamma(4, max_gamma=8)
    _poor_steps(policy, 6)
    assert policy.next_gamma() == 0
    # acceptance turns perfect: the next probe brings drafting back
    chosen = _steps(policy, 40, accept=lambda gamma: gamma)
    assert chosen[0] == 0 and min(chosen[-6:]) >= 4
    assert policy.probes == 0


def test_cost_model_alpha_follows_recent_blocks():
    forgetful, whole = CostModelGamma(4, max_gamma=8), CostModelGamma(4, max_gamma=8, memory=1.0)
    for policy in (forgetful, whole):
        for accepted in [0] * 20 + [4] * 10:
            policy.update(StepReport(4, accepted, 0.0, 0.1))
    assert whole.alpha() == pytest.approx(40 / 60)
    assert forgetful.alpha() > 0.85


def test_cost_model_with_a_floor_of_one_never_stops_drafting():
    policy = CostModelGamma(4, max_gamma=8, min_gamma=1)
    assert 0 not in _poor_steps(policy, 30)


def test_cost_model_does_not_charge_a_probe_for_catching_up():
    """After 8 target-only steps a probe's draft first feeds the 9 skipped tokens; counted
    per drafted token, that one-off would make drafting look 9x dearer than it is."""
    fair, naive = CostModelGamma(3, max_gamma=8), CostModelGamma(3, max_gamma=8)
    for policy, fed in ((fair, 9), (naive, None)):
        policy.update(StepReport(3, 3, 0.0, 0.1, prefill=True))
        policy.update(StepReport(1, 1, 0.09, 0.1, draft_tokens_fed=fed))  # 10 ms per token fed
    assert fair.cost_ratio() == pytest.approx(0.09 / 8 / 0.1)  # 1 drafted + 7 caught up
    assert naive.cost_ratio() == pytest.approx(0.9)
