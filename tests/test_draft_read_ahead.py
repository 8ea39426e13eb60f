"""A draft model that lacks much of the context reads it a chunk per step (`draft_read_chunk`,
as a server sets it) instead of all at once: each such step drafts nothing from the model,
reads at most the chunk, is not timed as a cost, and the output stays the target's."""

import pytest

from distillspec.engine.drafters import LookupFirstDrafter, ModelDrafter
from distillspec.engine.loop import autoregressive_generate, speculative_call
from distillspec.errors import DistillSpecError

#: 40 positions, no n-gram of 3 repeated: the draft model drafts every block
PROMPT = [(7 * i) % 61 + 2 for i in range(40)]
#: its tail "5 6 7" occurs earlier: prompt lookup drafts the first block
REPEATING = PROMPT[:6] + [5, 6, 7, 8, 9, 10] * 4 + [5, 6, 7]


class RecordingPolicy:
    """A fixed gamma that keeps every report it hears."""

    def __init__(self, gamma: int):
        self.gamma, self.reports = gamma, []

    def next_gamma(self) -> int:
        return self.gamma

    def update(self, report) -> None:
        self.reports.append(report)


def read_steps(prompt_length: int, chunk: int) -> int:
    """How many steps a draft that starts empty spends reading: each reads `chunk`
    positions and the step commits one token, until it lacks at most `chunk`."""
    held, context, steps = 0, prompt_length, 0
    while context - held > chunk:
        held, context, steps = held + chunk, context + 1, steps + 1
    return steps


def run(target, drafter, prompt, chunk, tokens=24):
    policy = RecordingPolicy(3)
    call = speculative_call(target, drafter, prompt, max_new_tokens=tokens, adaptive_gamma=policy,
                            draft_read_chunk=chunk)
    return call.run(), policy.reports


@pytest.mark.parametrize("chunk", [8, 13])
def test_a_long_context_is_read_a_chunk_per_step_and_the_output_stays_the_targets(target_model, partial_draft,
                                                                                     chunk):
    result, reports = run(target_model, ModelDrafter(partial_draft), PROMPT, chunk)
    assert result.tokens == autoregressive_generate(target_model, PROMPT, max_new_tokens=24).tokens
    reading = read_steps(len(PROMPT), chunk)
    assert result.stats.gamma_history[:reading] == [0] * reading
    assert result.stats.gamma_history[reading] == 3  # then it drafts, having caught up
    assert [r.draft_tokens_fed for r in reports[:reading]] == [chunk] * reading
    assert all(r.prefill and r.drafted == 0 for r in reports[:reading])  # no cost is timed from them
    assert reports[reading].draft_tokens_fed <= chunk + 2  # what it still lacked, and the block's own feeds
    assert not any(r.prefill for r in reports[reading + 1:])


def test_without_a_limit_the_draft_reads_the_whole_prompt_at_its_first_block(target_model, partial_draft):
    """The control: no limit (what `generate` uses), the first block reads all 40 positions."""
    result, reports = run(target_model, ModelDrafter(partial_draft), PROMPT, None)
    assert result.stats.gamma_history[0] == 3
    assert reports[0].draft_tokens_fed >= len(PROMPT)
    assert not any(r.drafted == 0 and r.draft_tokens_fed for r in reports)  # no step only read


def test_prompt_lookup_drafts_while_the_model_catches_up(target_model, partial_draft):
    result, reports = run(target_model, LookupFirstDrafter(ModelDrafter(partial_draft)), REPEATING, 8)
    assert result.tokens == autoregressive_generate(target_model, REPEATING, max_new_tokens=24).tokens
    stats = result.stats
    assert stats.looked_up_per_step[0] > 0  # the lookup's block, though the model has read nothing
    model_steps = [g for g, n in zip(stats.gamma_history, stats.looked_up_per_step) if not n]
    assert model_steps and model_steps[0] == 0  # the model's first turn is a read
    assert max(r.draft_tokens_fed for r in reports if r.drafted == 0) <= 8


def test_a_limit_below_one_is_refused(target_model, partial_draft):
    with pytest.raises(DistillSpecError, match="draft_read_chunk must be >= 1"):
        speculative_call(target_model, ModelDrafter(partial_draft), PROMPT, max_new_tokens=4, draft_read_chunk=0)


def test_a_pass_budget_caps_the_read_and_at_zero_the_draft_waits(target_model, partial_draft):
    """What a server's shared budget does to one call: the read is cut to the budget, and a
    draft with no budget left neither reads nor drafts (a plain step), until it gets some."""
    policy = RecordingPolicy(3)
    call = speculative_call(target_model, ModelDrafter(partial_draft), PROMPT, max_new_tokens=12,
                            adaptive_gamma=policy, draft_read_chunk=16)
    fed = []
    for budget in (5, 0, 16, 16, None):
        pending = call.begin_step(budget)
        fed.append((pending.gamma, pending.proposal.tokens_fed, pending.reads_draft))
        call.end_step(pending, call.target.forward(pending.feed, pending.num_logits), 0.0)
    # 40 lacking: 5 read; 36 lacking: none; 37, then 22 (each step commits a token): 16 and 16;
    # then 7 lacking: it reads them and drafts
    assert fed[:4] == [(0, 5, True), (0, 0, False), (0, 16, True), (0, 16, True)]
    assert fed[4][0] == 3 and fed[4][1] <= 7 + 2
    assert call.run().tokens == autoregressive_generate(target_model, PROMPT, max_new_tokens=12).tokens
