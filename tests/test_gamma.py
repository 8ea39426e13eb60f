"""Gamma schedules and the cost-model arithmetic (the figures come from `metrics`)."""

import random

import pytest

from distillspec import metrics
from distillspec.engine.gamma import CostModelGamma, HeuristicGamma, RampGamma, StepReport, VerifyCosts, \
    best_gamma, make_gamma_policy, resolve_adaptive
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


def test_ramp_doubles_after_full_acceptance_and_restarts_after_a_rejection():
    policy = RampGamma(1, max_gamma=32)
    seen = [policy.next_gamma()]
    for _ in range(6):  # a long copy: every block accepted
        gamma = policy.next_gamma()
        policy.update(StepReport(gamma, gamma, 0.0, 0.0))
        seen.append(policy.next_gamma())
    assert seen == [1, 2, 4, 8, 16, 32, 32]
    policy.update(StepReport(0, 0, 0.0, 0.0))  # no match, nothing proposed: no evidence either way
    assert policy.next_gamma() == 32
    policy.update(StepReport(5, 5, 0.0, 0.0))  # a shorter proposal than asked, all accepted
    assert policy.next_gamma() == 32
    policy.update(StepReport(32, 20, 0.0, 0.0))  # the copy ends
    assert policy.next_gamma() == 1
    policy.update(StepReport(1, 0, 0.0, 0.0))
    assert policy.next_gamma() == 1


def test_the_ramp_starts_at_one_token_and_stops_at_its_cap():
    policy = make_gamma_policy(3, "ramp")
    assert isinstance(policy, RampGamma) and policy.next_gamma() == 1 and policy.max_gamma == 32
    assert make_gamma_policy(3, "ramp", max_gamma=8).max_gamma == 8


def test_auto_is_the_ramp_for_prompt_lookup_and_the_cost_model_for_a_draft_model():
    assert resolve_adaptive("auto", prompt_lookup=True) == "ramp"
    assert resolve_adaptive("auto", prompt_lookup=False) == "cost-model"
    assert resolve_adaptive("heuristic", prompt_lookup=True) == "heuristic"  # a named policy stays


def test_verify_costs_are_means_where_seen_and_lines_between_and_beyond():
    costs = VerifyCosts()
    assert costs.seconds(3) is None
    for gamma, seconds in [(1, 0.12), (1, 0.14), (3, 0.17), (5, 0.29)]:
        costs.add(gamma, seconds)
    assert costs.seconds(1) == pytest.approx(0.13)  # the mean of the passes seen
    assert costs.seconds(2) == pytest.approx(0.15)  # halfway between 1 and 3
    assert costs.seconds(4) == pytest.approx(0.23)
    assert costs.seconds(7) == pytest.approx(0.29 + 2 * 0.06)  # the slope of the last two
    assert costs.seconds(0) == pytest.approx(0.13 - 0.02)  # the decode step, from the first two
    assert costs.largest_drafted() == 5
    single = VerifyCosts()
    single.add(4, 0.2)
    assert single.seconds(0) == single.seconds(9) == pytest.approx(0.2)  # one gamma seen: flat


def test_verify_costs_keep_the_decode_step_positive_and_a_measured_one_exact():
    steep = VerifyCosts()
    steep.add(1, 0.10)
    steep.add(2, 0.30)  # noise: extended to gamma 0 this would be -0.1 s
    assert steep.seconds(0) == pytest.approx(0.05)  # floor: half the smallest gamma's pass
    steep.add(0, 0.09)
    assert steep.seconds(0) == pytest.approx(0.09)
    assert steep.largest_drafted() == 2


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
    chosen = []
    for _ in range(15):
        gamma = policy.next_gamma()
        chosen.append(gamma)
        policy.update(StepReport(gamma, gamma, 0.0, 0.1))
    assert chosen[-1] == 12
    # it climbs: never drafts more than twice the largest gamma it has measured
    assert chosen[:5] == [2, 4, 8, 12, 12]


def _int8_verify_seconds(gamma):
    """Verification passes of an int8 target on an AVX2 CPU (docs/archive/results.md 0.7): rows in
    blocks of four, so 2-4 tokens cost little more than one and 5 cost 2.5 decode steps."""
    return 0.1 * {0: 1.0, 1: 1.06, 2: 1.2, 3: 1.4}.get(gamma, 2.5 + 0.15 * (gamma - 4))


def test_cost_model_finds_the_best_gamma_under_step_shaped_verification_costs():
    """A line fitted to such costs put the decode step far too low after one long block, so
    drafting looked dear and the policy fell back to the target alone; per-gamma costs find
    the gamma that really is best, and keep drafting."""
    alpha, cost = 0.85, 0.38
    true_speedup = {g: metrics.predicted_speedup(metrics.expected_block_efficiency(alpha, g), g, cost,
                                                 _int8_verify_seconds(g) / 0.1) for g in range(1, 9)}
    best = max(true_speedup.values())
    good = {g for g, speedup in true_speedup.items() if speedup >= 0.95 * best}
    assert good <= {1, 2, 3} and best > 1.3 and true_speedup[4] < 1.0  # the premise: a cliff at 4
    rng = random.Random(0)
    policy = CostModelGamma(3, max_gamma=8, memory=1.0)
    policy.update(StepReport(3, 3, 1.0, 5.0, prefill=True))
    chosen = []
    for _ in range(80):
        gamma = policy.next_gamma()
        chosen.append(gamma)
        accepted = next((i for i in range(gamma) if rng.random() >= alpha), gamma)
        policy.update(StepReport(gamma, accepted, cost * 0.1 * gamma, _int8_verify_seconds(gamma)))
    assert 0 not in chosen[5:]  # drafting pays here, and the policy keeps doing it
    assert set(chosen[-20:]) <= good
    assert policy.decode_step_seconds() == pytest.approx(0.1, rel=0.15)


@pytest.mark.parametrize("gamma, adaptive", [(0, "cost-model"), (0, "heuristic"), (0, "ramp"), (-1, None),
                                             (2.5, None)])
def test_bad_gamma_is_named(gamma, adaptive):
    with pytest.raises(DistillSpecError, match="gamma must be an integer >= 1"):
        make_gamma_policy(gamma, adaptive)


def test_a_fixed_gamma_of_zero_never_drafts():
    assert make_gamma_policy(0, None).next_gamma() == 0


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


def _prior(cost: float, verify_steps: list[float], step: float = 0.03):
    from distillspec.engine.gamma import CostPrior

    return CostPrior(cost * step, {gamma: v * step for gamma, v in enumerate(verify_steps)})


# llama.cpp's 1.5B target on an AVX-512 EPYC with the 0.5B draft: c 0.6, a 4-token pass 2.5 steps
UNPAYING = ([1.0, 1.6, 1.9, 2.3, 2.6], 0.6)
# a cheap draft where verification costs about a step: drafting pays
PAYING = ([1.0, 1.05, 1.1, 1.15, 1.2], 0.1)


def test_with_costs_where_no_gamma_can_pay_the_cost_model_never_drafts_nor_probes():
    verify, cost = UNPAYING
    policy = CostModelGamma(3, prior=_prior(cost, verify))
    assert policy.next_gamma() == 0  # from the first step: nothing to measure first
    for _ in range(200):  # a long reply of target-only steps: no probe block ever
        policy.update(StepReport(0, 0, 0.0, 0.03))
        assert policy.next_gamma() == 0


def test_with_costs_where_drafting_pays_the_cost_model_drafts_and_probes():
    """Negative control of the test above: the same policy with a cheap draft drafts at once,
    and after dropping to gamma 0 (a run of rejections) probes again."""
    verify, cost = PAYING
    policy = CostModelGamma(3, prior=_prior(cost, verify))
    assert policy.next_gamma() == 3
    for _ in range(50):  # every block rejected at once: alpha falls until no gamma pays
        if policy.gamma == 0:
            break
        policy.update(StepReport(policy.gamma, 0, 0.003 * policy.gamma, 0.033))
    assert policy.gamma == 0
    probes = 0
    for _ in range(100):
        gamma = policy.next_gamma()
        if gamma:
            probes += 1
            policy.update(StepReport(gamma, 0, 0.003 * gamma, 0.033))
        else:
            policy.update(StepReport(0, 0, 0.0, 0.03))
    assert probes >= 2


# a cut draft on the EPYC (c 0.19, a 2-token pass 1.68 steps): only a draft right about 87% of
# the time at gamma 1 pays, which a poorly aligned cut is not on chat
MARGINAL = ([1.0, 1.68, 2.0, 2.3, 2.6], 0.19)


def test_a_draft_that_pays_only_if_far_better_than_typical_waits_for_a_probe():
    """The first block is a bet placed before any acceptance is known. Where only a draft
    right far more often than TYPICAL_ALPHA could pay, the policy starts with target steps
    (a short reply then never feeds the draft its prompt), probes one token after 8 steps,
    and keeps drafting if the probes are accepted."""
    verify, cost = MARGINAL
    policy = CostModelGamma(3, prior=_prior(cost, verify))
    assert policy.next_gamma() == 0
    for _ in range(7):
        policy.update(StepReport(0, 0, 0.0, 0.03))
        assert policy.next_gamma() == 0
    policy.update(StepReport(0, 0, 0.0, 0.03))
    assert policy.next_gamma() == 1  # the probe
    for _ in range(10):  # a draft that is always right pays even here
        gamma = policy.next_gamma()
        assert gamma >= 1
        policy.update(StepReport(gamma, gamma, cost * 0.03 * gamma, verify[min(gamma, 4)] * 0.03))
    # negative control: the same costs with a draft of typical acceptance or better known to
    # pay (cheap verification) start drafting at once, at most the gamma asked for
    assert CostModelGamma(3, prior=_prior(PAYING[1], PAYING[0])).next_gamma() == 3
    assert CostModelGamma(2, prior=_prior(PAYING[1], PAYING[0])).next_gamma() == 2


# the 12-block cut's pass costs as timed in a code bench on the EPYC (docs/cheap-draft.md,
# section 7): even a draft right 95% of the time would gain at most 6% (gamma 4)
CUT_ON_EPYC = ([1.0, 2.15, 2.47, 3.26, 3.45], 0.207)


def test_a_draft_whose_best_case_gains_little_is_never_tried():
    """Probing costs (catch-up feeding, a few blocks after a lucky probe): a draft whose best
    case beats the target by less than PROBE_WORTH is never drafted nor probed."""
    from distillspec.engine.gamma import PROBE_WORTH, drafting_can_pay

    verify, cost = CUT_ON_EPYC
    prior = _prior(cost, verify)
    assert drafting_can_pay(cost, prior.verify_ratio, 4, worth=1.0)  # it would pay, barely (gamma 4)
    assert not drafting_can_pay(cost, prior.verify_ratio, 4) and PROBE_WORTH > 1.0
    # at gamma 8 the line through the last two timed passes makes even this draft look good
    assert drafting_can_pay(cost, prior.verify_ratio, 8)
    policy = CostModelGamma(3, max_gamma=8, prior=prior)
    for _ in range(100):
        assert policy.next_gamma() == 0
        policy.update(StepReport(0, 0, 0.0, 0.03))
    # negative control: MARGINAL's best case gains about 20% (gamma 2), so it is probed
    verify, cost = MARGINAL
    probing = CostModelGamma(3, prior=_prior(cost, verify))
    tried = 0
    for _ in range(20):
        gamma = probing.next_gamma()
        tried += gamma > 0
        probing.update(StepReport(gamma, 0, cost * 0.03 * gamma, verify[min(gamma, 4)] * 0.03) if gamma
                       else StepReport(0, 0, 0.0, 0.03))
    assert tried >= 1


def test_drafting_can_pay_is_the_best_case_bound():
    from distillspec.engine.gamma import drafting_can_pay

    for steps, cost, expected in ((*UNPAYING, False), (*PAYING, True)):
        assert drafting_can_pay(cost, lambda g: steps[min(g, len(steps) - 1)], 8) is expected
    assert drafting_can_pay(None, lambda g: None, 8)  # unknown costs: could pay


def test_best_case_speedup_is_the_ceiling_drafting_can_pay_checks():
    """The figure printed beside the pass costs: the best gamma's tau / (gamma c + v) at the
    best-case alpha. Free verification and a free draft give tau itself at the largest gamma;
    the cut's costs on the EPYC stay under PROBE_WORTH (so the policy never drafts), MARGINAL's
    clear it (so it probes): the ceiling and drafting_can_pay agree."""
    from distillspec.engine.gamma import BEST_CASE_ALPHA, PROBE_WORTH, best_case_speedup, drafting_can_pay
    from distillspec.metrics import expected_block_efficiency

    gamma, ceiling = best_case_speedup(0.0, lambda g: 1.0, 4)
    assert gamma == 4 and ceiling == pytest.approx(expected_block_efficiency(BEST_CASE_ALPHA, 4))
    for (steps, cost), pays in ((CUT_ON_EPYC, False), (MARGINAL, True)):
        verify = _prior(cost, steps).verify_ratio
        gamma, ceiling = best_case_speedup(cost, verify, 4)
        assert (ceiling > PROBE_WORTH) is pays is drafting_can_pay(cost, verify, 4)
        assert 1 <= gamma <= 4


def test_the_priors_ratios_hold_when_the_calls_decode_steps_are_slower():
    """The prior is timed on a short context; a long reply's decode steps cost more seconds.
    Mixing the prior's seconds with the call's made verification look cheap and the policy
    probed (seen in a bench); its ratios must stand until the call measures its own."""
    verify, cost = UNPAYING
    policy = CostModelGamma(3, prior=_prior(cost, verify, step=0.03))
    for _ in range(200):
        policy.update(StepReport(0, 0, 0.0, 0.045))  # decode steps 1.5x the prior's
        assert policy.next_gamma() == 0
    assert policy.verify_ratio(3) == pytest.approx(verify[3])


def test_the_pass_costs_line_gives_the_machines_ceiling():
    """What generate and serve print after timing a pair: the costs in decode steps and the
    best a 95%-accurate draft could do with them (under 1.1x for the cut's costs on the
    EPYC, above it for MARGINAL's: a negative control)."""
    from distillspec.models.pass_costs import describe_prior

    line = describe_prior(_prior(CUT_ON_EPYC[1], CUT_ON_EPYC[0]), cached=True)
    assert line.startswith("pass costs: decode step 30.0 ms, draft c 0.21, v(1) 2.15, v(2) 2.47")
    ceiling = float(line.split("at most ")[1].split("x")[0])
    assert ceiling < 1.1 and "cached timing" in line
    marginal = describe_prior(_prior(MARGINAL[1], MARGINAL[0]), cached=False)
    assert float(marginal.split("at most ")[1].split("x")[0]) > 1.1 and "timed now" in marginal


def test_pass_costs_spread_a_slow_start_over_every_size(monkeypatch):
    """Just after loading, a machine runs its first passes slower. Timed one size after
    another, that slowness all fell on the decode step (timed first), and verification
    looked cheap; timed in rounds of every size, v(1) stays about 2 for passes whose cost
    is proportional to their tokens. Fake caches: 3 ms a token, 30 ms more for the first
    8 passes of the target."""
    import time

    from distillspec.models import pass_costs

    class Cache:
        length = pass_costs.CONTEXT_TOKENS

        def __init__(self, counts):
            self.counts = counts

        def forward(self, ids, num_logits):
            self.counts[0] += 1
            time.sleep(0.003 * len(ids) + (0.03 if self.counts[0] <= 8 else 0.0))

        def rollback(self, length):
            pass

    target_counts, draft_counts = [-1], [100]  # the context fill is the target's pass 0
    caches = iter([Cache(target_counts), Cache(draft_counts)])
    monkeypatch.setattr(pass_costs, "open_cache", lambda model: next(caches))
    monkeypatch.setattr(pass_costs, "output_rows", lambda model: 100)
    prior = pass_costs.measure_pass_costs("target", "draft")
    assert 1.6 < prior.verify_ratio(1) < 2.4 and 4.0 < prior.verify_ratio(4) < 6.0
    assert 0.7 < prior.cost_ratio() < 1.4
