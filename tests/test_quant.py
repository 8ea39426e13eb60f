"""Int8 weight-only layers: close to their dequantized reference, and exact as drafts."""

import pytest
import torch

from distillspec.engine.drafters import ModelDrafter
from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.engine.sampling import SamplingConfig
from distillspec.errors import DistillSpecError
from distillspec.models.drafts import load_drafter, split_quant
from distillspec.models.quant import Int8Linear, quantize_model, quantize_rows
from distillspec.models.subsets import layer_subset_draft

from conftest import matches_distribution, perturbed_copy, tiny_llama
from test_decoding import PROMPT, SMALL_V, exact_first_two


def test_rows_round_to_within_half_a_step():
    weight = torch.randn(48, 40, generator=torch.Generator().manual_seed(0)) * 3
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@torch.no_grad()
def test_int8_linear_matches_its_dequantized_reference(dtype, tolerance):
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(40, 48, bias=True).to(dtype)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(2, 5, 40, generator=generator).to(dtype)
    reference = x.float() @ layer.dequantized().T + linear.bias.float()
    out = layer(x)
    assert out.dtype == dtype and out.shape == (2, 5, 48)
    assert torch.allclose(out.float(), reference, atol=tolerance * float(reference.abs().max()), rtol=0)
    rows = torch.tensor([3, 0, 47])
    assert torch.allclose(layer.select_rows(rows)(x).float(), out[..., rows].float(), atol=1e-5)


def test_quantizing_a_layer_subset_leaves_the_targets_shared_head_alone(target_model):
    draft = layer_subset_draft(target_model, [0])
    assert draft.get_output_embeddings() is target_model.get_output_embeddings()
    quantize_model(draft)
    assert isinstance(draft.get_output_embeddings(), Int8Linear)
    assert isinstance(target_model.get_output_embeddings(), torch.nn.Linear)
    assert all(not isinstance(m, torch.nn.Linear) for m in draft.modules())


@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_with_an_int8_draft_equals_the_target(target_model, gamma):
    draft = quantize_model(perturbed_copy(target_model, scale=0.05, seed=7))
    result = speculative_generate(target_model, draft, PROMPT, max_new_tokens=30, gamma=gamma)
    assert result.tokens == autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert 0 < result.stats.accepted < result.stats.drafted


def test_sampling_with_an_int8_draft_follows_the_target():
    target, draft = tiny_llama(20, vocab_size=SMALL_V), tiny_llama(21, vocab_size=SMALL_V)
    config = SamplingConfig(1.0)
    first, second = exact_first_two(target, [1, 2, 3], config)
    drafter = ModelDrafter(quantize_model(draft))
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
    assert split_quant("some/folder@int8") == ("some/folder", "int8")
    assert split_quant("name@v2") == ("name@v2", None)
    drafter = load_drafter("layers:0@int8", target_model)
    assert isinstance(drafter.model.get_output_embeddings(), Int8Linear)
    assert isinstance(load_drafter("layers:0", target_model, quant="int8").model.model.layers[0].mlp.up_proj,
                      Int8Linear)
    with pytest.raises(DistillSpecError, match="no weights to quantize"):
        load_drafter("prompt-lookup", target_model, quant="int8")
    with pytest.raises(DistillSpecError, match="unknown quantization 'int4'"):
        load_drafter("layers:0", target_model, quant="int4")


# ----------------------------------------------------------------------------- weight-left layout


@torch.no_grad()
def test_weight_left_linear_equals_the_linear_it_replaces():
    from distillspec.models.layout import WeightLeftLinear

    linear = torch.nn.Linear(40, 48, bias=True)
    x = torch.randn(2, 5, 40, generator=torch.Generator().manual_seed(2))
    swapped = WeightLeftLinear(linear)
    assert swapped.weight is linear.weight  # shared, not copied
    assert torch.allclose(swapped(x), linear(x), atol=1e-5)


def test_weight_left_layout_keeps_greedy_output_exact(target_model):
    import copy

    from distillspec.models.layout import WeightLeftLinear, apply_layout

    target = apply_layout(copy.deepcopy(target_model), "weight-left")
    assert isinstance(target.get_output_embeddings(), WeightLeftLinear)
    draft = apply_layout(perturbed_copy(target_model, scale=0.05, seed=7), "weight-left")
    expected = autoregressive_generate(target_model, PROMPT, max_new_tokens=30).tokens
    assert speculative_generate(target, draft, PROMPT, max_new_tokens=30, gamma=4).tokens == expected
    with pytest.raises(DistillSpecError, match="unknown linear layout 'diagonal'"):
        apply_layout(target, "diagonal")
