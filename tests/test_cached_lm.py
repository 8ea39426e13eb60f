"""KV-cache rollback: after any history of extends and rewinds, logits equal a fresh prefill,
for full-attention, sliding-window and mixed models, past the window."""

import random

import pytest
import torch

from distillspec.engine.kv import CachedLM, PrefixCachedLM, cache_keyword, common_prefix_length

from conftest import tiny_gemma3, tiny_llama, tiny_mistral

MODELS = {"llama": lambda: tiny_llama(3), "gemma3-window16": lambda: tiny_gemma3(3),
          "mistral-window12": lambda: tiny_mistral(3)}


def fresh_next_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


@pytest.mark.parametrize("name", MODELS)
def test_length_rollback_equals_fresh_prefill_past_the_window(name):
    """The loop's pattern: feed the pending token + a drafted block, keep a prefix, repeat."""
    model = MODELS[name]()
    lm = CachedLM(model)
    rng = random.Random(0)
    committed = [rng.randrange(64) for _ in range(5)]
    for _ in range(40):  # ~80 tokens: several times past the windows of 16 and 12
        drafted = [rng.randrange(64) for _ in range(rng.randint(0, 5))]
        feed = committed[lm.length:] + drafted
        block_logits = lm.forward(torch.tensor(feed), len(drafted) + 1)
        for i in range(len(drafted) + 1):
            expected = fresh_next_logits(model, committed + drafted[:i])
            assert torch.allclose(block_logits[i], expected, atol=1e-4), f"position {i}, length {len(committed)}"
        keep = rng.randint(0, len(drafted))
        lm.rollback(len(committed) + keep)
        committed = committed + drafted[:keep] + [rng.randrange(64)]
    assert len(committed) > 60
    assert lm.cache.get_seq_length() == lm.length


def test_sliding_layers_stay_at_their_window_after_rollbacks():
    model = tiny_gemma3(4, window=16)
    lm = CachedLM(model)
    ids = list(range(1, 41))
    lm.forward(torch.tensor(ids), 1)
    lm.forward(torch.tensor([5, 6, 7, 8]), 1)
    lm.rollback(42)  # drop two of the four
    for layer, kind in zip(lm.cache.layers, model.config.layer_types):
        stored = layer.keys.shape[-2]
        assert stored == (15 if kind == "sliding_attention" else 42), kind
    expected = fresh_next_logits(model, ids + [5, 6, 9])
    assert torch.allclose(lm.forward(torch.tensor([9]), 1)[0], expected, atol=1e-4)


def test_rollback_beyond_the_cache_is_refused():
    lm = CachedLM(tiny_llama(3))
    lm.forward(torch.tensor([1, 2, 3]), 1)
    with pytest.raises(ValueError, match="cannot roll back to 4"):
        lm.rollback(4)


def test_content_addressed_logits_after_random_rewinds_equal_fresh_prefill():
    model = tiny_llama(3)
    lm = PrefixCachedLM(model)
    rng = random.Random(0)
    committed = [rng.randrange(64) for _ in range(5)]
    for _ in range(40):
        drafted = [rng.randrange(64) for _ in range(rng.randint(0, 5))]
        block_logits = lm.next_logits(committed + drafted, len(drafted) + 1)
        for i in range(len(drafted) + 1):
            expected = fresh_next_logits(model, committed + drafted[:i])
            assert torch.allclose(block_logits[i], expected, atol=1e-4), f"position {i}"
        keep = rng.randint(0, len(drafted))  # accept a prefix, then one new token
        committed = committed + drafted[:keep] + [rng.randrange(64)]
        if rng.random() < 0.1:  # sometimes rewind further than the last step (a user re-prompting)
            committed = committed[: rng.randint(1, len(committed))]
    final = lm.next_logits(committed, 1)[0]
    assert torch.allclose(final, fresh_next_logits(model, committed), atol=1e-4)
    assert lm.cache.get_seq_length() == len(committed)


def test_appended_tokens_are_read_back_for_the_next_comparison():
    model = tiny_llama(3)
    lm = PrefixCachedLM(model)
    lm.next_logits([1, 2, 3], 1)
    lm.append(torch.tensor([4]))
    lm.append(torch.tensor([5]))
    logits = lm.next_logits([1, 2, 3, 4, 9], 1)  # keeps [1..4], drops 5, feeds 9
    assert lm.cached_ids == [1, 2, 3, 4, 9]
    assert lm.tokens_processed == 3 + 1 + 1 + 1
    assert torch.allclose(logits[0], fresh_next_logits(model, [1, 2, 3, 4, 9]), atol=1e-4)


def test_common_prefix_length_agrees_with_a_plain_loop():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.randrange(3) for _ in range(rng.randint(0, 10))]
        plain = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix_length(a, b) == plain


def test_without_past_recording_transformers_refuses_this_rollback():
    """Negative control: the sliding-window tests above do cross the window; a plain
    sliding cache cannot roll back there (the crash the rollback strategy fixes)."""
    from transformers import DynamicCache

    model = tiny_gemma3(3)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.tensor([list(range(1, 21))]), use_cache=True, **{cache_keyword(model): cache})
    with pytest.raises(RuntimeError, match="crop"):
        cache.crop(-2)


def test_cached_lm_passes_its_cache_under_the_current_name():
    """transformers 5.24 renamed `past_key_values` to `cache` and warns on the old name on
    every pass; CachedLM must use whichever name the installed version takes, silently."""
    import warnings

    model = tiny_llama(2)
    lm = CachedLM(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm.forward(torch.tensor([1, 2, 3]), 1)
        lm.forward(torch.tensor([4]), 1)
    assert lm.cache.get_seq_length() == 4  # the second pass reused the cache the first filled
    assert not [w for w in caught if "past_key_values" in str(w.message)]
