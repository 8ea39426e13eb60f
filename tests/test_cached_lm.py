"""KV-cache rollback: after any history of extends and rewinds, logits equal a fresh prefill."""

import random

import torch

from distillspec.cached_lm import CachedLM, common_prefix_length

from conftest import tiny_llama


def fresh_next_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_logits_after_random_rollbacks_equal_fresh_prefill():
    model = tiny_llama(3)
    lm = CachedLM(model)
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
        # sometimes rewind further than the last step (a user re-prompting)
        if rng.random() < 0.1:
            committed = committed[: rng.randint(1, len(committed))]
    final = lm.next_logits(committed, 1)[0]
    assert torch.allclose(final, fresh_next_logits(model, committed), atol=1e-4)
    assert lm.cache.get_seq_length() == len(committed)


def test_common_prefix_length_agrees_with_a_plain_loop():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.randrange(3) for _ in range(rng.randint(0, 10))]
        plain = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix_length(a, b) == plain
