"""Shippable delta drafts: store only unshared tensors, rebuild on the target."""

import pytest
import torch

from distillspec.engine.loop import autoregressive_generate, speculative_generate
from distillspec.models.delta import dequantize_rows, load_delta, save_delta, unshared_state
from distillspec.models.quant import quantize_rows
from distillspec.models.subsets import layer_subset_draft
from distillspec.engine.drafters import ModelDrafter
from distillspec.models.drafts import load_drafter
from distillspec.errors import DistillSpecError

from conftest import tiny_llama


def trained_subset(target, layers, seed=0):
    draft = layer_subset_draft(target, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # stand-in for distillation: change the unshared weights
        for p in unshared_state(draft, target):
            param = dict(draft.named_parameters())[p]
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    return draft


def test_quantization_round_trip_error_is_small():
    w = torch.randn(64, 32)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8
    assert (dequantize_rows(q, scale[:, None]) - w).abs().max() <= scale.max() / 2 + 1e-6


def test_delta_stores_only_unshared_tensors_and_rebuilds_exactly(tmp_path):
    target = tiny_llama(0, layers=4)
    draft = trained_subset(target, [0, 3])
    names = set(unshared_state(draft, target))
    assert names and not any("embed" in n or "lm_head" in n for n in names)
    save_delta(draft, target, [0, 3], tmp_path / "exact", quantize=False)
    rebuilt = load_delta(tmp_path / "exact", target)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, draft(ids).logits)
    assert rebuilt.get_input_embeddings() is target.get_input_embeddings()


def test_quantized_delta_is_close_and_decoding_stays_exact(tmp_path):
    target = tiny_llama(0, layers=4)
    draft = trained_subset(target, [0, 3])
    save_delta(draft, target, [0, 3], tmp_path / "q", quantize=True)
    drafter = load_drafter(str(tmp_path / "q"), target)
    assert isinstance(drafter, ModelDrafter)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        rebuilt, original = drafter.model(ids).logits, draft(ids).logits
    assert (rebuilt - original).abs().max() < 0.1 * original.abs().max()  # int8 per-row: a few percent
    assert not torch.equal(rebuilt, original)
    prompt = [3, 17, 42, 5]
    assert speculative_generate(target, drafter, prompt, max_new_tokens=20).tokens == \
        autoregressive_generate(target, prompt, max_new_tokens=20).tokens


def test_delta_for_another_target_is_refused(tmp_path):
    target = tiny_llama(0, layers=4)
    save_delta(trained_subset(target, [0, 3]), target, [0, 3], tmp_path / "d")
    with pytest.raises(DistillSpecError, match="it was made for a target with"):
        load_delta(tmp_path / "d", tiny_llama(0, layers=4, vocab_size=32))


def test_default_draft_for_a_foreign_target_is_an_undistilled_subset():
    target = tiny_llama(0, layers=6)
    drafter = load_drafter("default", target)
    assert drafter.model.config.num_hidden_layers == 4
