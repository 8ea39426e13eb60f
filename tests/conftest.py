"""Tiny in-process models for fast tests, and shared statistical helpers.

Random tiny models get a large initializer range so their next-token distributions are
peaked and differ from model to model: near-uniform distributions would make both greedy
ties and the negative controls of the statistical tests meaningless.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def real_model_marks(package: str, install: str) -> list:
    """Marks for a module of tests on a real model that comes from an optional package
    (slow: loading, converting or running a real model takes seconds to minutes)."""
    return [pytest.mark.real_model, pytest.mark.slow,
            pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=install)]


def tiny_llama(seed: int, vocab_size: int = 64, layers: int = 2, context: int = 256,
               eos_token_id=None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def perturbed_copy(model, scale: float, seed: int):
    """A copy of `model` with Gaussian noise on every weight: a partly agreeing draft."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale * param.std())
    return draft


@pytest.fixture(scope="session")
def target_model():
    return tiny_llama(0)


@pytest.fixture(scope="session")
def unrelated_draft():
    return tiny_llama(1)


@pytest.fixture(scope="session")
def partial_draft(target_model):
    return perturbed_copy(target_model, scale=0.05, seed=7)


def chi_square_statistic(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square of observed `counts` against expected probabilities `probs` ([K])."""
    total = counts.sum()
    expected = probs * total
    keep = expected > 0
    if (counts[~keep] > 0).any():
        return math.inf  # a sample where the reference has zero mass
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def chi_square_critical(df: int, z: float = 3.72) -> float:
    """Upper critical value (Wilson-Hilferty); z = 3.72 is a one-sided p of 1e-4.

    Several distributions are checked per test, so p = 1e-4 keeps false alarms rare;
    the negative controls fail by orders of magnitude more than this margin.
    """
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def distribution_critical(probs: torch.Tensor) -> float:
    """The χ² value at which `matches_distribution` rejects samples of `probs` ([K])."""
    return chi_square_critical(max(int((probs > 0).sum()) - 1, 1))


def matches_distribution(samples: torch.Tensor, probs: torch.Tensor) -> bool:
    """True when integer `samples` are consistent with `probs` at p = 1e-4."""
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    return chi_square_statistic(counts, probs.double()) < distribution_critical(probs)


# ----------------------------------------------------------------------------- with tokenizer

TINY_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:?!+-=()\n")
TINY_SPECIALS = ["<pad>", "<eos>", "<unk>", "<user>", "<bot>"]


def tiny_tokenizer():
    """A character-level fast tokenizer (53 tokens) with a one-turn chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(TINY_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.chat_template = (
        "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
    )
    return tokenizer


def save_tiny_draft(folder):
    """A 2-layer tiny Llama on the tiny target's vocabulary (a model-spec draft, e.g. for LoRA)."""
    tiny_llama(5, vocab_size=64, layers=2, eos_token_id=1).save_pretrained(folder)
    return folder


def save_tiny_target(folder, seed: int = 0, layers: int = 4):
    """A tiny Llama over the tiny tokenizer (vocab 64, EOS 1), saved with its tokenizer."""
    model = tiny_llama(seed, vocab_size=64, layers=layers, eos_token_id=1)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


TINY_PROMPTS = [f"what is {a} plus {b}?" for a in range(12) for b in range(6)]


def write_prompts(path, prompts=TINY_PROMPTS, with_completions: bool = True):
    import json

    with open(path, "w") as handle:
        for prompt in prompts:
            record = {"prompt": prompt}
            if with_completions:
                record["completion"] = "the answer is " + prompt.split()[2]
            handle.write(json.dumps(record) + "\n")
    return path


def tiny_gemma3(seed: int, window: int = 16, context: int = 256):
    """A tiny Gemma 3: sliding-window layers (window `window`) interleaved with a global one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=window, max_position_embeddings=context,
        query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        initializer_range=0.02, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # Gemma scales embeddings by sqrt(hidden): a small init keeps its outputs varied
    return Gemma3ForCausalLM(config).eval()


def tiny_mistral(seed: int, window: int = 12, context: int = 256):
    """A tiny Mistral: every layer uses a sliding window of `window` tokens."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=window, max_position_embeddings=context, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
    )
    return MistralForCausalLM(config).eval()


def trained_weights(out) -> dict:
    """The trainable tensors of a run's last checkpoint."""
    from pathlib import Path

    from safetensors.torch import load_file

    return load_file(str(Path(out) / "checkpoint" / "draft_trainable.safetensors"))


def whole_and_resumed(make_config, root, stop_at: int = 3) -> tuple[dict, dict]:
    """Weights of one uninterrupted run and of the same run stopped at `stop_at` and resumed.

    make_config(out) -> DistillConfig; the two must be equal for resume to be exact.
    """
    from distillspec.distill.trainer import distill

    distill(make_config(root / "whole"))
    distill(make_config(root / "parts"), stop_at=stop_at)
    distill(make_config(root / "parts"), resume=True)
    return trained_weights(root / "whole"), trained_weights(root / "parts")


def distill_workspace(tmp_path_factory, name: str):
    """A folder with a tiny saved target (and tokenizer) and a prompt file, for distillation tests."""
    root = tmp_path_factory.mktemp(name)
    save_tiny_target(root / "target")
    write_prompts(root / "prompts.jsonl")
    return root


def tiny_distill_config(workspace, out, **overrides):
    """A short distillation recipe on `distill_workspace`'s target and prompts."""
    from distillspec.distill.config import DistillConfig

    values = dict(target=str(workspace / "target"), prompts=str(workspace / "prompts.jsonl"), out=str(out), steps=6,
                  max_new_tokens=8, eval_every=100, save_every=2, lr=3e-3, warmup_steps=2, bf16=False,
                  heldout_fraction=0.2)
    values.update(overrides)
    return DistillConfig(**values)


#: the chat-templated prompt "Write a Python function that adds two numbers." as SmolLM2's
#: tokenizer writes it (its default system turn included); fixed ids keep tests free of
#: tokenizer loads
SMOLLM_CHAT_PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
                      19712, 8182, 2, 198, 1, 4093, 198, 19161, 253, 5905, 1517, 338, 7845, 827, 2966, 30, 2, 198, 1,
                      520, 9531, 198]


def assert_same_up_to_a_near_tie(target, prompt: list[int], expected: list[int], got: list[int],
                                 max_gap_in_std: float = 0.1) -> None:
    """`got` equals `expected` (a one-token-pass greedy decode), or first differs where the
    target's two candidates are nearly tied.

    Why: on llama.cpp (and in bf16) a multi-token verification pass rounds differently from
    one-token passes, so where two tokens are within rounding of each other either may come
    out; which ones tie depends on the CPU's kernels. A real error (a wrong token accepted)
    differs by far more than `max_gap_in_std` standard deviations of the logits."""
    import torch

    from distillspec.engine.backend import open_cache

    if got == expected:
        return
    i = next((k for k in range(min(len(got), len(expected))) if got[k] != expected[k]), None)
    assert i is not None, f"one output is a prefix of the other: {len(got)} vs {len(expected)} tokens"
    logits = open_cache(target).forward(torch.tensor(prompt + expected[:i]), 1)[0].float()
    gap = (logits[expected[i]] - logits[got[i]]).abs().item()
    spread = logits[torch.isfinite(logits)].std().item()
    assert gap <= max_gap_in_std * spread, (f"token {i}: {got[i]} instead of {expected[i]}, logit gap {gap:.4f} "
                                            f"(logits' std {spread:.2f}): not a near tie")


def counting_gguf_parses(monkeypatch) -> list:
    """Replaces gguf.GGUFReader by a wrapper that records the path of each file the code asks
    to parse (what every parse costs: seconds for a tokenizer's strings; the session's own
    shortcut for installed files, below, sits under the count)."""
    import gguf

    parsed, original = [], gguf.GGUFReader

    def counting(path, *args, **kwargs):
        parsed.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    return parsed


@pytest.fixture(scope="session", autouse=True)
def installed_ggufs_parsed_once():
    """For the whole session, a GGUF inside an installed package is parsed once.

    Why: the tests that write drafts each parse their base, SmolLM2's published GGUF, and
    gguf-py parses its tokenizer strings one at a time: dozens of parses of one file were a
    large share of the suite (figures: docs/design.md). A package's file never changes, so one
    parse serves every test.
    Every other file (what the tests write) is parsed as the library parses it, and the
    library itself still keeps nothing between operations (`models.gguf_read`): only this
    test session holds the parsed files."""
    import sysconfig
    from pathlib import Path

    import gguf

    from distillspec.models.gguf_read import file_identity

    installed = [Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")]
    original, parsed = gguf.GGUFReader, {}

    def parse_installed_once(path, mode="r"):
        if mode != "r" or not any(Path(path).resolve().is_relative_to(folder) for folder in installed):
            return original(path, mode)
        key = file_identity(path)
        if key not in parsed:
            parsed[key] = original(path, mode)
        return parsed[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", parse_installed_once)
        yield parsed
