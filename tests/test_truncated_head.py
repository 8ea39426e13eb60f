"""A draft whose LM head covers only some tokens: cheaper, and still exact."""

import pytest
import torch

from distillspec.engine.kv import PrefixCachedLM
from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.models.drafts import frequent_token_ids
from distillspec.engine.drafters import ModelDrafter

from conftest import matches_distribution, tiny_llama, tiny_tokenizer
from test_decoding import PROMPT, SMALL_V, exact_first_two


def test_full_size_truncated_head_equals_the_full_head(target_model):
    full = PrefixCachedLM(target_model).next_logits(PROMPT, 3)
    truncated = PrefixCachedLM(target_model, head_token_ids=torch.arange(64)).next_logits(PROMPT, 3)
    assert torch.allclose(full, truncated, atol=1e-5)


def test_tokens_outside_the_head_get_zero_probability(target_model):
    head = torch.tensor([0, 5, 9, 33])
    logits = PrefixCachedLM(target_model, head_token_ids=head).next_logits(PROMPT, 1)[0]
    outside = torch.ones(64, dtype=torch.bool)
    outside[head] = False
    assert torch.isinf(logits[outside]).all() and torch.isfinite(logits[head]).all()


def test_greedy_with_truncated_draft_head_equals_target(target_model):
    drafter = ModelDrafter(target_model, head_token_ids=torch.arange(0, 64, 2))
    result = speculative_generate(target_model, drafter, PROMPT, max_new_tokens=30, gamma=4)
    assert result.tokens == autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert 0 < result.stats.acceptance_rate < 1  # some proposals missed tokens outside the head


@pytest.mark.slow  # thousands of sampled runs
def test_sampling_with_truncated_draft_head_follows_the_target():
    target, draft = tiny_llama(20, vocab_size=SMALL_V), tiny_llama(21, vocab_size=SMALL_V)
    from distillspec.engine.sampling import SamplingConfig

    first, _ = exact_first_two(target, [1, 2, 3], SamplingConfig(1.0))
    drafter = ModelDrafter(draft, head_token_ids=torch.tensor([0, 2, 3, 6]))
    tokens = torch.tensor([
        speculative_generate(target, drafter, [1, 2, 3], max_new_tokens=2, gamma=1, temperature=1.0, seed=s).tokens[0]
        for s in range(1500)
    ])
    assert matches_distribution(tokens, first)


def test_frequent_token_ids_keep_special_tokens():
    tokenizer = tiny_tokenizer()
    ids = frequent_token_ids(tokenizer, ["aaaa bbb cc", "aaa"], 8)
    assert len(ids) == 8
    assert tokenizer.eos_token_id in ids and tokenizer.pad_token_id in ids
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    assert a in ids and b in ids


def test_frequent_token_ids_keep_every_added_token_and_the_chat_frame():
    """On llama.cpp a token outside the head is also outside the draft's vocabulary (fed as
    a stand-in), so what every chat prompt holds must be kept: added tokens a tokenizer does
    not call special (here <user>, <bot>) and the words of the template's frame (here '=')."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<user>={{ m['content'] }}{% endfor %}<bot>"
    user, bot, equals, a, b, c = tokenizer.convert_tokens_to_ids(["<user>", "<bot>", "=", "a", "b", "c"])
    assert user not in tokenizer.all_special_ids  # added, not special: kept all the same
    ids = frequent_token_ids(tokenizer, ["aaaa bbb cc"], 9)
    assert {user, bot, equals, a, b} <= set(ids)  # '=' only in the template's frame
    assert c not in ids  # the budget is spent: the negative control
