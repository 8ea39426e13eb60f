"""Benchmark arithmetic on known inputs, and a tally turned into a row."""

import pytest

from distillspec import metrics
from distillspec.eval.runners import BenchConfig, Sample
from distillspec.eval.tally import Tally, make_row
from distillspec.engine.stats import GenerationStats


def test_rates_and_block_efficiency():
    assert metrics.acceptance_rate(3, 12) == 0.25
    assert metrics.acceptance_rate(0, 0) is None
    assert metrics.block_efficiency(30, 12) == 2.5
    assert metrics.block_efficiency(5, 0) is None


def test_per_position_acceptance_is_conditional_on_being_drafted():
    # 10 blocks drafted position 0, 6 accepted it; 6 drafted position 1 (after accepting 0), 3 accepted
    assert metrics.per_position_acceptance([6, 3], [10, 6, 4]) == [0.6, 0.5, 0.0]
    assert metrics.per_position_acceptance([], [0, 2]) == [None, 0.0]
    with pytest.raises(ValueError):
        metrics.per_position_acceptance([3], [2])


def test_add_counts_pads_the_shorter_list():
    assert metrics.add_counts([1, 2], [3, 4, 5]) == [4, 6, 5]
    assert metrics.add_counts([], [1]) == [1]


def test_expected_and_predicted_speedup():
    # alpha 0.5, gamma 4: tau = (1 - 0.5**5) / 0.5 = 1.9375; c = 0.1
    tau = (1 - 0.5 ** 5) / 0.5
    assert metrics.expected_speedup(tau, 4, 0.1) == pytest.approx(1.9375 / 1.4)
    # a verification pass costing exactly one step reproduces the expected speedup ...
    assert metrics.predicted_speedup(tau, 4, 0.1, 1.0) == pytest.approx(metrics.expected_speedup(tau, 4, 0.1))
    # ... and one costing 2.5 steps lowers it
    assert metrics.predicted_speedup(tau, 4, 0.1, 2.5) == pytest.approx(1.9375 / 2.9)


def test_speedup_and_median_index():
    assert metrics.speedup(0.02, 0.01) == 2.0
    assert metrics.speedup(None, 0.01) is None
    assert metrics.median_index([3.0, 1.0, 2.0]) == 2
    assert metrics.median_index([4.0, 1.0, 3.0, 2.0]) == 3  # lower median (2.0) of an even count
    assert metrics.mean([2, 3, 4]) == 3 and metrics.mean([]) is None
    assert metrics.cost_ratio(0.02, 0.1) == pytest.approx(0.2) and metrics.cost_ratio(None, 0.1) is None
    assert metrics.verify_ratio(0.25, 0.1) == pytest.approx(2.5) and metrics.verify_ratio(0.25, 0.0) is None


def _stats(tokens, passes, drafted, accepted, acc_pos, dra_pos, gammas, draft_s, target_s):
    stats = GenerationStats(new_tokens=tokens, target_calls=passes, drafted=drafted, accepted=accepted,
                            accepted_per_position=acc_pos, drafted_per_position=dra_pos, gamma_history=gammas)
    stats.draft_seconds_per_step = draft_s
    stats.target_seconds_per_step = target_s
    stats.drafted_per_step = list(gammas)
    return stats


def test_tally_row_against_a_hand_computed_baseline():
    baseline = Tally(BenchConfig("target", 0.0))
    # target alone: 4 tokens in 0.5 s; first pass (prefill) 0.2 s, later steps 0.1 s each
    base_stats = _stats(4, 4, 0, 0, [], [], [], [], [0.2, 0.1, 0.1, 0.1])
    baseline.add_prompt([Sample([5, 6, 7, 8], 0.5, 0.2, base_stats)])
    spec = Tally(BenchConfig("speculative", 0.0, "d", 2))
    # 2 steps of gamma 2: first accepts both (3 tokens), second accepts 0 (1 token)
    spec_stats = _stats(4, 2, 4, 2, [1, 1], [2, 2], [2, 2], [0.05, 0.04], [0.25, 0.15])
    slow = Sample([5, 6, 7, 8], 0.9, 0.3, spec_stats)
    fast = Sample([5, 6, 7, 8], 0.25, 0.3, spec_stats)
    middle = Sample([5, 6, 7, 9], 0.4, 0.3, spec_stats)
    assert spec.add_prompt([slow, fast, middle]) is middle  # the median repeat speaks for the prompt
    row = make_row(spec, baseline, greedy=True)
    assert row["acceptance_rate"] == 0.5
    assert row["block_efficiency"] == 2.0
    assert row["per_position_acceptance"] == [0.5, 0.5]
    assert row["cost_ratio"] == pytest.approx((0.04 / 2) / 0.1)  # later draft time per position / target step
    assert row["verify_ratio"] == pytest.approx(0.15 / 0.1)
    assert row["speedup"] == pytest.approx((0.5 / 4) / (0.4 / 4))
    assert row["expected_speedup"] == pytest.approx(2.0 / (1 + 2 * 0.2))
    assert row["predicted_speedup"] == pytest.approx(2.0 / (2 * 0.2 + 1.5))
    assert row["realised_fraction"] == pytest.approx(row["speedup"] / row["expected_speedup"])
    assert row["same_tokens_fraction"] == 0.0  # the median repeat's last token differs
    assert row["time_to_first_token"] == 0.3
    assert make_row(spec, baseline, greedy=False)["same_tokens_fraction"] is None


def test_replies_closed_by_different_end_tokens_count_as_the_same():
    """llama.cpp's tool says only that a reply ended, not with which end token: any of the
    model's end tokens closing both replies counts as one; anything else still differs."""
    baseline = Tally(BenchConfig("target", 0.0))
    peer = Tally(BenchConfig("llama-speculative", 0.0, "d", 1))
    stats = _stats(3, 3, 0, 0, [], [], [], [], [0.1, 0.1, 0.1])
    for base, other in (([5, 6, 2], [5, 6, 3]), ([5, 6, 2], [5, 6]), ([5, 6, 2], [5, 7, 2]), ([5, 6], [5, 6])):
        baseline.add_prompt([Sample(base, 0.3, 0.1, stats)])
        peer.add_prompt([Sample(other, 0.3, None)])
    assert make_row(peer, baseline, greedy=True, end_ids=[2, 3])["same_tokens_fraction"] == 0.5
    assert make_row(peer, baseline, greedy=True)["same_tokens_fraction"] == 0.25  # control: no end tokens named


def test_the_tools_reply_is_cut_at_the_limit_and_closed_when_it_ended_early():
    from distillspec.eval.llama_runners import tool_reply_tokens

    assert tool_reply_tokens([1, 2, 3], 4, 8, 0) == [1, 2, 3, 0]  # decoded 4 < 8: it stopped on an end token
    assert tool_reply_tokens([1, 2, 3, 4, 5], 5, 4, 0) == [1, 2, 3, 4]  # its last block ran past the limit
    assert tool_reply_tokens([1, 2, 3, 4], 4, 4, 0) == [1, 2, 3, 4]  # stopped at the limit: no end token
    assert tool_reply_tokens([1, 2], 3, 8, None) == [1, 2]  # a model without end tokens


def test_target_row_has_no_draft_metrics():
    baseline = Tally(BenchConfig("target", 1.0))
    baseline.add_prompt([Sample([1, 2], 0.2, 0.1, _stats(2, 2, 0, 0, [], [], [], [], [0.1, 0.1]))])
    row = make_row(baseline, baseline, greedy=False)
    assert row["speedup"] == 1.0 and row["block_efficiency"] == 1.0
    assert row["acceptance_rate"] is None and row["cost_ratio"] is None and row["expected_speedup"] is None


def test_answer_accuracy_ignores_numbers_echoed_from_the_question():
    from distillspec.eval.quality import answer_accuracy, answer_correct

    question = "Solve 3*x = 12 for x."
    assert answer_correct("x = 4", question, "4")
    assert answer_correct("The answer is 4.0, so", question, "4")
    assert not answer_correct("3*x = 12, so x is 12", question, "12")  # 12 is in the question
    assert not answer_correct("I do not know", question, "4")
    assert answer_correct("it is -0.5", "Divide -1 by 2.", "-0.5")
    assert answer_correct("about 1,554,955", "?", "1554955")
    assert answer_accuracy(["4", "5"], [question, question], ["4", "4"]) == 0.5
    with pytest.raises(ValueError):
        answer_correct("4", question, "four")


def test_scorable_indices_keep_plain_numbers_only():
    from distillspec.eval.quality import scorable_indices

    assert scorable_indices(["4", "1/3", None, "-0.5", "x + 1"]) == [0, 3]


def test_per_token_costs_skip_the_prefill_step_and_pooling_skips_every_prefill():
    from distillspec.engine.stats import pool_stats

    stats = GenerationStats()
    stats.draft_seconds_per_step = [1.0, 0.2, 0.3]  # the first step holds both prefills
    stats.drafted_per_step = [4, 2, 3]
    stats.target_seconds_per_step = [5.0, 0.5, 0.7]
    assert stats.draft_seconds_per_token == pytest.approx(0.5 / 5)
    assert stats.target_pass_seconds == pytest.approx(0.6)
    pooled = pool_stats([stats, stats])
    assert pooled.draft_seconds_per_token == pytest.approx(0.5 / 5)  # both prefills dropped
    assert pooled.target_pass_seconds == pytest.approx(0.6)
    only_prefill = GenerationStats(draft_seconds_per_step=[1.0], drafted_per_step=[4], target_seconds_per_step=[5.0])
    assert only_prefill.draft_seconds_per_token is None  # nothing after the prefill to measure
    assert only_prefill.target_pass_seconds is None
