"""Int8 layers (weight-only, and w8a8): close to their dequantized reference, and exact as drafts."""

import contextlib
import copy
import json
import subprocess
import sys

import pytest
import torch

from distillspec.engine.drafters import ModelDrafter
from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.engine.sampling import SamplingConfig
from distillspec.errors import DistillSpecError
from distillspec.models import quant
from distillspec.models.drafts import DraftSpec, load_drafter, parse_draft_spec
from distillspec.models.quant import Int8DynamicLinear, Int8Linear, quantize_model, quantize_rows
from distillspec.models.subsets import layer_subset_draft

from conftest import matches_distribution, perturbed_copy, tiny_llama
from test_decoding import PROMPT, SMALL_V, exact_first_two


def test_rows_round_to_within_half_a_step():
    weight = torch.randn(48, 40, generator=torch.Generator().manual_seed(0)) * 3
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6).all()


#: run in a child process: torch's int8 kernel crashed the whole process (SIGSEGV) on Intel
#: Xeons at odd widths in bf16, and a crash must show as this test failing, not as a dead suite.
#: Prints one line per (width, rows): the error relative to the reference's largest value.
INT8_REFERENCE_CHILD = """
import json, sys, torch
from distillspec.models.quant import Int8Linear
dtype = getattr(torch, sys.argv[1])
torch.set_grad_enabled(False)
for width in map(int, sys.argv[2].split(",")):
    for rows in (1, 5):
        generator = torch.Generator().manual_seed(width)
        linear = torch.nn.Linear(width, 48, bias=True).to(dtype)
        layer = Int8Linear.from_linear(linear)
        x = torch.randn(2, rows, width, generator=generator).to(dtype)
        reference = x.float() @ layer.dequantized().T + linear.bias.float()
        out = layer(x)
        assert out.dtype == dtype and out.shape == (2, rows, 48)
        picked = torch.tensor([3, 0, 47])
        assert torch.allclose(layer.select_rows(picked)(x).float(), out[..., picked].float(), atol=1e-5)
        error = float((out.float() - reference).abs().max() / reference.abs().max())
        print(json.dumps({"width": width, "rows": rows, "error": error}), flush=True)
"""
#: 40 and 100 crashed the kernel on the Xeon; 48 and 896 are widths it serves
INT8_WIDTHS = (40, 100, 48, 896)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_int8_linear_matches_its_dequantized_reference(dtype, tolerance):
    child = subprocess.run([sys.executable, "-c", INT8_REFERENCE_CHILD, dtype, ",".join(map(str, INT8_WIDTHS))],
                           capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in child.stdout.splitlines()]
    assert child.returncode == 0, f"exit {child.returncode} after {lines[-1:] or 'nothing'}: {child.stderr[-2000:]}"
    assert [(r["width"], r["rows"]) for r in lines] == [(w, n) for w in INT8_WIDTHS for n in (1, 5)]
    assert all(r["error"] <= tolerance for r in lines), lines


@torch.no_grad()
def test_int8_kernel_is_used_at_the_widths_it_serves(monkeypatch):
    """Odd widths take the dequantized product, multiples of 16 torch's int8 kernel (the
    fast path must not silently become the fallback everywhere)."""
    calls = []
    real = quant.dequantized_product
    monkeypatch.setattr(quant, "dequantized_product", lambda *a: calls.append(a[1].shape[1]) or real(*a))
    for width in (40, 48, 100, 896):
        Int8Linear.from_linear(torch.nn.Linear(width, 16))(torch.randn(1, width))
    assert calls == [40, 100]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_w8a8_linear_is_within_its_activation_step_of_the_dequantized_reference(dtype):
    """Activations are rounded to 7 bits per call (one scale for the input), so the error is
    bounded by half an activation step times the row's absolute weight sum. Negative
    control: a weight off by one step in one row breaks the bound on that row."""
    generator = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(3, 7, 64, generator=generator)
    layer = Int8DynamicLinear.from_linear(linear)
    weight = layer.dequantized()
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == (3, 7, 48)
    x_step = float(x.max() - x.min()) / 127  # 7-bit affine activations (reduce_range)
    bound = x_step / 2 * weight.abs().sum(1) + (3e-2 * out.float().abs().max() if dtype == torch.bfloat16 else 1e-4)
    error = (out.float() - (x @ weight.T + linear.bias)).abs()
    assert (error <= bound).all()
    assert float(error.max()) > 0  # the activations really are rounded
    wrong = weight.clone()
    wrong[5] += layer.rows()[1][5] * 40
    assert not ((out.float() - (x @ wrong.T + linear.bias)).abs() <= bound).all()
    rows = torch.tensor([3, 0, 47])
    assert torch.equal(layer.select_rows(rows)(x), layer(x)[..., rows])


def test_w8a8_keeps_the_int8_rows_it_was_given():
    linear = torch.nn.Linear(40, 24, bias=False)
    q, scale = quantize_rows(linear.weight)
    rows_q, rows_scale, bias = Int8DynamicLinear.from_linear(linear).rows()
    assert torch.equal(rows_q, q) and torch.allclose(rows_scale, scale) and bias is None


def test_w8a8_leaves_the_mlp_down_projection_weight_only():
    model = quantize_model(tiny_llama(3), form="w8a8")
    kinds = {name.rsplit(".", 1)[-1]: type(module) for name, module in model.named_modules()
             if isinstance(module, (Int8Linear, Int8DynamicLinear))}
    assert kinds.pop("down_proj") is Int8Linear
    assert set(kinds.values()) == {Int8DynamicLinear} and {"q_proj", "up_proj", "lm_head"} <= set(kinds)


def test_quantizing_a_layer_subset_leaves_the_targets_shared_head_alone(target_model):
    draft = layer_subset_draft(target_model, [0])
    assert draft.get_output_embeddings() is target_model.get_output_embeddings()
    quantize_model(draft)
    assert isinstance(draft.get_output_embeddings(), Int8Linear)
    assert isinstance(target_model.get_output_embeddings(), torch.nn.Linear)
    assert all(not isinstance(m, torch.nn.Linear) for m in draft.modules())


@pytest.mark.parametrize("form", ["int8", "w8a8"])
@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_with_an_int8_draft_equals_the_target(target_model, gamma, form):
    draft = quantize_model(perturbed_copy(target_model, scale=0.05, seed=7), form=form)
    result = speculative_generate(target_model, draft, PROMPT, max_new_tokens=30, gamma=gamma)
    assert result.tokens == autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert 0 < result.stats.accepted < result.stats.drafted


@pytest.mark.parametrize("form", ["int8", "w8a8"])
def test_sampling_with_an_int8_draft_follows_the_target(form):
    target, draft = tiny_llama(20, vocab_size=SMALL_V), tiny_llama(21, vocab_size=SMALL_V)
    config = SamplingConfig(1.0)
    first, second = exact_first_two(target, [1, 2, 3], config)
    drafter = ModelDrafter(quantize_model(draft, form=form))
    outs = [speculative_generate(target, drafter, [1, 2, 3], max_new_tokens=3, gamma=2, temperature=1.0,
                                 seed=s).tokens for s in range(1500)]
    assert matches_distribution(torch.tensor([o[0] for o in outs]), first)
    assert matches_distribution(torch.tensor([o[1] for o in outs]), second)


def test_an_int8_target_is_the_distribution_preserved(target_model):
    import copy

    quantized = quantize_model(copy.deepcopy(target_model))
    draft = perturbed_copy(target_model, scale=0.05, seed=7)
    result = speculative_generate(quantized, draft, PROMPT, max_new_tokens=25, gamma=4)
    assert result.tokens == autoregressive_generate(quantized, PROMPT, max_new_tokens=25).tokens


def test_draft_specs_take_an_int8_suffix(target_model):
    assert parse_draft_spec("some/folder@int8") == DraftSpec("some/folder", "int8")
    assert parse_draft_spec("name@v2") == DraftSpec("name@v2")
    assert parse_draft_spec("a@int8@head=64") == parse_draft_spec("a@head=64@int8") == DraftSpec("a", "int8", 64)
    with pytest.raises(DistillSpecError, match="bad truncated head 'head=0'"):
        parse_draft_spec("a@head=0")
    drafter = load_drafter("layers:0@int8", target_model)
    assert isinstance(drafter.model.get_output_embeddings(), Int8Linear)
    assert isinstance(load_drafter("layers:0", target_model, quant="int8").model.model.layers[0].mlp.up_proj,
                      Int8Linear)
    with pytest.raises(DistillSpecError, match="no weights to quantize"):
        load_drafter("prompt-lookup", target_model, quant="int8")
    with pytest.raises(DistillSpecError, match="unknown draft quantization 'int4'; choose one of none, int8, w8a8, auto"):
        load_drafter("layers:0", target_model, quant="int4")
    assert parse_draft_spec("a@w8a8@head=8") == DraftSpec("a", "w8a8", 8)
    assert isinstance(load_drafter("layers:0@w8a8", target_model).model.get_output_embeddings(), Int8DynamicLinear)
    assert isinstance(target_model.get_output_embeddings(), torch.nn.Linear)


def test_without_fbgemm_w8a8_is_not_a_candidate_and_is_refused(monkeypatch):
    import platform

    from distillspec.models import draft_format

    if platform.machine() in ("x86_64", "AMD64"):
        assert draft_format.candidates() == ("none", "int8", "w8a8")  # x86 torch builds ship fbgemm
    monkeypatch.setattr(draft_format, "fbgemm_available", lambda: False)
    assert draft_format.candidates() == ("none", "int8")
    monkeypatch.setattr(quant, "fbgemm_available", lambda: False)
    with pytest.raises(DistillSpecError, match="w8a8 needs torch's fbgemm"):
        quant.check_quant("w8a8")


def test_a_w8a8_target_is_refused_on_the_command_line_and_by_the_bench(capsys):
    from distillspec.eval.bench import BenchSettings

    with pytest.raises(DistillSpecError, match="unknown target quantization 'w8a8'; choose one of none, int8"):
        BenchSettings(target="default", drafts=["default"], target_quant="w8a8").validate()
    assert BenchSettings(target="default", drafts=["default"], draft_quant="w8a8").validate().draft_quant == "w8a8"

    from distillspec.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--target-quant", "w8a8", "--prompt", "x"])
    assert "invalid choice: 'w8a8'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- weight-left layout


@torch.no_grad()
def test_weight_left_linear_equals_the_linear_it_replaces():
    from distillspec.models.layout import WeightLeftLinear

    linear = torch.nn.Linear(40, 48, bias=True)
    x = torch.randn(2, 5, 40, generator=torch.Generator().manual_seed(2))
    swapped = WeightLeftLinear(linear)
    assert swapped.weight is linear.weight  # shared, not copied
    assert torch.allclose(swapped(x), linear(x), atol=1e-5)


@torch.no_grad()
def test_weight_left_linear_with_max_rows_leaves_long_passes_to_nn_linear():
    from distillspec.models.layout import WeightLeftLinear, weight_left_product

    linear = torch.nn.Linear(40, 48, bias=True)
    swapped = WeightLeftLinear(linear, max_rows=8)
    generator = torch.Generator().manual_seed(4)
    short, long = torch.randn(1, 5, 40, generator=generator), torch.randn(2, 10, 40, generator=generator)
    expected_short = weight_left_product(short.reshape(5, 40), linear.weight, linear.bias).reshape(1, 5, 48)
    assert torch.equal(swapped(short), expected_short)  # 5 rows < 8: weight-left
    assert torch.equal(swapped(long), linear(long))  # 20 rows: nn.Linear's own product
    assert torch.allclose(swapped(short), linear(short), atol=1e-5)


def test_few_row_products_weight_left_swaps_every_linear_and_restores_them(target_model):
    from distillspec.models.layout import WeightLeftLinear, few_row_products_weight_left

    model = copy.deepcopy(target_model)
    before = {name: module for name, module in model.named_modules() if type(module) is torch.nn.Linear}
    assert len(before) == 2 * 7 + 1  # per layer q, k, v, o, gate, up, down; and the head
    with few_row_products_weight_left(model, max_rows=4):
        inside = dict(model.named_modules())
        assert all(isinstance(inside[name], WeightLeftLinear) for name in before)
        assert all(inside[name].weight is before[name].weight for name in before)  # shared, not copied
    with pytest.raises(RuntimeError, match="interrupted"), few_row_products_weight_left(model):
        raise RuntimeError("interrupted")
    after = {name: module for name, module in model.named_modules() if type(module) is torch.nn.Linear}
    assert all(after[name] is before[name] for name in before)  # the very same layers are back


def test_sampled_completions_multiply_weight_left_and_keep_greedy_output(target_model, monkeypatch):
    from distillspec.distill import torch_passes
    from distillspec.models.layout import WeightLeftLinear

    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    plain = torch_passes.sample_completions(target_model, prompts, 12, 0.0, eos_ids=set(), pad_id=0)
    seen = []
    forward = WeightLeftLinear.forward
    monkeypatch.setattr(WeightLeftLinear, "forward", lambda self, x: seen.append(x.shape) or forward(self, x))
    assert torch_passes.sample_completions(target_model, prompts, 12, 0.0, eos_ids=set(), pad_id=0) == plain
    assert seen and all(len(s) == 3 and s[0] == 3 for s in seen)  # every product of the batch of 3 went through it
    assert not any(isinstance(m, WeightLeftLinear) for m in target_model.modules())  # and it is undone
    seen.clear()
    monkeypatch.setattr(torch_passes, "few_row_products_weight_left", lambda model: contextlib.nullcontext())
    assert torch_passes.sample_completions(target_model, prompts, 12, 0.0, eos_ids=set(), pad_id=0) == plain
    assert not seen  # negative control: without the context nothing is weight-left


def test_sampling_weight_left_through_peft_lora_layers_keeps_greedy_output():
    from distillspec.distill.torch_passes import sample_completions
    from distillspec.models.adapters import add_lora

    torch.manual_seed(0)
    draft = add_lora(tiny_llama(0), 4)
    with torch.no_grad():  # a trained-looking adapter: B away from its zero start
        for name, param in draft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    plain = sample_completions(draft, prompts, 12, 0.0, set(), 0, weight_left=False)
    assert sample_completions(draft, prompts, 12, 0.0, set(), 0, weight_left=True) == plain
    assert plain != sample_completions(tiny_llama(0), prompts, 12, 0.0, set(), 0)  # the adapter matters here


def test_evaluation_text_is_sampled_in_nn_linears_own_order(target_model, monkeypatch):
    """The held-out text that every draft is scored on must not change with a speed choice."""
    from distillspec.data.tokenize import TokenizedExample
    from distillspec.distill.evaluate import sample_eval_text
    from distillspec.models.layout import WeightLeftLinear

    seen = []
    forward = WeightLeftLinear.forward
    monkeypatch.setattr(WeightLeftLinear, "forward", lambda self, x: seen.append(1) or forward(self, x))
    items = [TokenizedExample(prompt_ids=[1, 2, 3], reference_ids=None), TokenizedExample([4, 5], None)]
    text = sample_eval_text(target_model, items, 6, eos_ids=set(), pad_id=0, seed=0)
    assert len(text.batches) == 1 and not seen


def test_weight_left_layout_keeps_greedy_output_exact(target_model):
    from distillspec.models.layout import WeightLeftLinear, apply_layout

    target = apply_layout(copy.deepcopy(target_model), "weight-left")
    assert isinstance(target.get_output_embeddings(), WeightLeftLinear)
    draft = apply_layout(perturbed_copy(target_model, scale=0.05, seed=7), "weight-left")
    expected = autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert speculative_generate(target, draft, PROMPT, max_new_tokens=30, gamma=4).tokens == expected
    with pytest.raises(DistillSpecError, match="unknown linear layout 'diagonal'"):
        apply_layout(target, "diagonal")


@torch.no_grad()
def test_fp32_prefill_linear_is_bf16_for_short_passes_and_fp32_for_long_ones():
    from distillspec.models.layout import Fp32PrefillLinear, Fp32Scratch

    linear = torch.nn.Linear(40, 48, bias=True).to(torch.bfloat16)
    scratch = Fp32Scratch()
    swapped = Fp32PrefillLinear(linear, scratch, min_rows=8)
    generator = torch.Generator().manual_seed(3)
    short = torch.randn(1, 5, 40, generator=generator).to(torch.bfloat16)
    assert torch.equal(swapped(short), linear(short))  # the very same bf16 product
    long = torch.randn(1, 20, 40, generator=generator).to(torch.bfloat16)
    reference = torch.nn.functional.linear(long.float(), linear.weight.float(), linear.bias.float())
    out = swapped(long)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 20, 48)
    assert torch.equal(out, reference.to(torch.bfloat16))  # fp32 product, rounded once
    other = Fp32PrefillLinear(torch.nn.Linear(48, 8).to(torch.bfloat16), scratch, min_rows=8)
    assert other(out).shape == (1, 20, 8) and torch.equal(swapped(long), out)  # the shared buffer is reused safely


def test_auto_layout_picks_fp32_prefill_only_for_bf16_without_native_bf16(target_model, monkeypatch):
    import copy

    from distillspec.models import layout

    bf16 = copy.deepcopy(target_model).to(torch.bfloat16)
    monkeypatch.setattr(layout, "has_native_bf16", lambda: False)
    assert layout.resolve_layout(bf16, "auto") == "fp32-prefill"
    assert layout.resolve_layout(target_model, "auto") == "default"  # fp32 model
    monkeypatch.setattr(layout, "has_native_bf16", lambda: True)
    assert layout.resolve_layout(bf16, "auto") == "default"  # AMX / AVX-512 bf16: native is faster
    monkeypatch.setattr(layout, "has_native_bf16", lambda: False)
    swapped = layout.apply_layout(bf16, "auto")
    assert isinstance(swapped.model.layers[0].mlp.up_proj, layout.Fp32PrefillLinear)
    # exact: greedy speculative output equals the target's, both under the layout
    prompt = PROMPT * 12  # a prefill long enough to take the fp32 path
    expected = autoregressive_generate(swapped, prompt, max_new_tokens=20).tokens
    assert speculative_generate(swapped, swapped, prompt, max_new_tokens=20, gamma=3).tokens == expected


@pytest.mark.parametrize("native, dtype, requested, used, reason", [
    (False, torch.bfloat16, "fastest", "compiled", "emulates bf16"),  # the AVX2 EPYC
    (True, torch.bfloat16, "fastest", "default", "natively"),  # AMX Xeon, AVX-512 bf16 EPYC
    (False, torch.bfloat16, "auto", "fp32-prefill", "emulates bf16"),
    (True, torch.bfloat16, "auto", "default", "natively"),
    (False, torch.float32, "fastest", "default", "not a bf16 model"),
    (False, torch.bfloat16, "weight-left", "weight-left", "as asked"),
])
def test_layout_choice_follows_the_cpu_and_says_why(target_model, monkeypatch, native, dtype, requested, used, reason):
    import copy

    from distillspec.models import layout

    monkeypatch.setattr(layout, "has_native_bf16", lambda: native)
    model = copy.deepcopy(target_model).to(dtype)
    chosen, why = layout.layout_choice(model, requested)
    assert chosen == used == layout.resolve_layout(model, requested) and reason in why


@pytest.mark.parametrize("form, layer", [("int8", Int8Linear), ("w8a8", Int8DynamicLinear)])
def test_head_suffix_truncates_to_the_most_frequent_training_tokens(target_model, form, layer):
    class CountingTokenizer:
        """Token ids are the characters' codes minus 97 ('a' -> 0), as a 64-id vocabulary."""

        all_special_ids = [63]

        def __len__(self):
            return 64

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) - 97 for ch in text]}

    texts = ["aaab", "bbc", "a"]
    drafter = load_drafter(f"layers:0@{form}@head=3", target_model, CountingTokenizer(), head_texts=lambda: texts)
    assert drafter.head_token_ids.tolist() == [0, 1, 63]  # a, b and the special token
    assert isinstance(drafter.model.get_output_embeddings(), layer)
    logits = drafter.session().lm.forward(torch.tensor(PROMPT), 1)
    assert torch.isinf(logits[0, 2:63]).all() and torch.isfinite(logits[0, [0, 1, 63]]).all()
    with pytest.raises(DistillSpecError, match="needs the target's tokenizer and head_texts"):
        load_drafter("layers:0@head=3", target_model)
    # exact: greedy output with the truncated int8 draft is the target's
    expected = autoregressive_generate(target_model, PROMPT, max_new_tokens=20).tokens
    assert speculative_generate(target_model, drafter, PROMPT, max_new_tokens=20, gamma=3).tokens == expected


def test_a_model_draft_loads_beside_an_int8_target(tmp_path, target_model):
    import copy

    from distillspec.models.drafts import save_draft

    save_draft(perturbed_copy(target_model, scale=0.05, seed=7), None, tmp_path / "draft")
    quantized = quantize_model(copy.deepcopy(target_model))
    drafter = load_drafter(str(tmp_path / "draft") + "@int8", quantized)
    expected = autoregressive_generate(quantized, PROMPT, max_new_tokens=20).tokens
    assert speculative_generate(quantized, drafter, PROMPT, max_new_tokens=20, gamma=3).tokens == expected


_RSS_SCRIPT = """
import gc, sys, psutil, torch
from transformers import LlamaConfig, LlamaForCausalLM
import distillspec.models.quant as quant
rss = lambda: psutil.Process().memory_info().rss / 2**20
if sys.argv[1] == "keep":
    quant.return_freed_memory = lambda: False
torch.manual_seed(0)
before = rss()
config = LlamaConfig(vocab_size=8192, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
model = quant.apply_quant(LlamaForCausalLM(config), "int8")
gc.collect()
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
@pytest.mark.slow  # measures RSS of a real-sized model
def test_quantizing_returns_the_float_weights_memory_to_the_os():
    """A ~320 MiB fp32 model quantized to int8 leaves the process well under its fp32 size
    (each run in a fresh process, so other tests' memory does not count). Negative control:
    without returning freed memory, the float weights' pages stay resident.

    glibc's own choices (its dynamic mmap threshold, its automatic top-of-heap trim) decide
    whether a small model's freed weights happen to go back anyway; CI saw both outcomes.
    The subprocesses pin them as a real model's load leaves them (weights on the heap, no
    automatic trim), so only `return_freed_memory` decides the outcome."""
    import os
    import subprocess

    heap_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**34)}

    def growth(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode], capture_output=True, text=True,
                             check=True, env=heap_env)
        return float(out.stdout.split()[0])

    fp32_mib = 320  # 84M parameters in fp32
    assert growth("return") < 0.5 * fp32_mib
    assert growth("keep") > 0.8 * fp32_mib


@torch.no_grad()
def test_a_layer_subset_of_an_int8_target_keeps_its_int8_layers_and_stays_exact():
    """`--target-quant int8` with a layers: draft raised a state-dict error (issue 33)."""
    target = quantize_model(tiny_llama(4, layers=3))
    draft = layer_subset_draft(target, [0, 2])
    assert isinstance(draft.model.layers[1].mlp.down_proj, Int8Linear)
    assert torch.equal(draft.model.layers[1].mlp.down_proj.q, target.model.layers[2].mlp.down_proj.q)
    assert draft.model.layers[1].mlp.down_proj is not target.model.layers[2].mlp.down_proj  # a copy
    expected = autoregressive_generate(target, PROMPT, max_new_tokens=16).tokens
    assert speculative_generate(target, draft, PROMPT, max_new_tokens=16, gamma=3).tokens == expected
