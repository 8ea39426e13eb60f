"""LoRA drafts: training an adapter, loading it as a draft, exporting plain HF folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from distillspec.cli import main
from distillspec.distill.budget import run_budget
from distillspec.distill.trainer import distill
from distillspec.errors import DistillSpecError
from distillspec.models.adapters import add_lora, is_adapter_folder, save_adapter
from distillspec.models.drafts import load_drafter
from distillspec.models.load import load_model

from conftest import (distill_workspace, save_tiny_draft, tiny_distill_config, tiny_llama, trained_weights,
                      whole_and_resumed)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = distill_workspace(tmp_path_factory, "lora")
    save_tiny_draft(root / "draft")
    return root


def lora_config(workspace, out, **overrides):
    values = dict(draft=str(workspace / "draft"), batch_size=4, lr=1e-2, eval_prompts=8, spec_eval_prompts=2,
                  spec_eval_tokens=8, data_source="draft", divergence="fkl", lora_rank=4)
    return tiny_distill_config(workspace, out, **{**values, **overrides})


def nudge(model, seed=0):
    """Random LoRA B weights (peft starts them at zero, which would make every test trivially pass)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_only_the_adapter_trains(workspace):
    model = add_lora(load_model(workspace / "draft")[0], rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # rank 4 on q,k,v,o,gate,up,down of 2 layers (hidden 32, kv 16, mlp 64)
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 2 * 4 * sum(a + b for a, b in shapes)


def merge_tolerance(model, logits: torch.Tensor) -> float:
    """How far merged logits may lie from the adapter's, from rounding alone.

    Merging computes (W + s*B@A) @ x where the adapter computed W @ x + s*B@(A@x): the same
    sums in another order, each product's result off by up to about eps * n * its scale for n
    terms summed. The error compounds over the layers, so the bound is eps(dtype) x the longest
    sum (the widest layer input) x the number of layers x the logits' scale. For the fp32 test
    model: 1.2e-7 * 64 * 2 * ~15 = 2e-4; the test first failed on a Xeon at a fixed 1e-5
    (3 of 1,152 logits off by 1.6e-5), while the adapter moves logits by more than 1e-3.
    """
    config = model.config
    longest_sum = max(config.hidden_size, config.intermediate_size)
    return torch.finfo(logits.dtype).eps * longest_sum * config.num_hidden_layers * float(logits.abs().max())


def test_adapter_folder_loads_as_the_merged_model(workspace, tmp_path):
    wrapped = add_lora(load_model(workspace / "draft")[0], rank=4)
    nudge(wrapped)
    ids = torch.randint(2, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrapped_logits = wrapped(input_ids=ids).logits
    folder = save_adapter(wrapped, tmp_path / "adapter", base_spec=str(workspace / "draft"))
    assert is_adapter_folder(folder) and not is_adapter_folder(workspace / "draft")
    loaded, _ = load_model(folder)
    plain, _ = load_model(workspace / "draft")
    with torch.no_grad():
        loaded_logits, plain_logits = loaded(input_ids=ids).logits, plain(input_ids=ids).logits
    tolerance = merge_tolerance(plain, plain_logits)
    torch.testing.assert_close(loaded_logits, wrapped_logits, atol=tolerance, rtol=0)
    # negative control: the adapter moves logits by far more than the tolerance
    assert (loaded_logits - plain_logits).abs().max() > 10 * tolerance
    assert type(loaded) is type(plain)  # merged: a plain HF model, no peft wrapper


def test_adapter_folder_names_its_base_spec_not_a_cache_path(workspace, tmp_path):
    wrapped = add_lora(load_model(workspace / "draft")[0], rank=2)
    seen_by_peft = wrapped.peft_config["default"].base_model_name_or_path
    folder = save_adapter(wrapped, tmp_path / "adapter", base_spec="qwen2.5-coder-0.5b")
    saved = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert saved == "qwen2.5-coder-0.5b" and seen_by_peft != saved
    assert wrapped.peft_config["default"].base_model_name_or_path == seen_by_peft  # the live model is untouched


def test_adapter_for_another_base_is_explained(workspace, tmp_path):
    wrapped = add_lora(tiny_llama(2, vocab_size=64, layers=3), rank=2)
    save_adapter(wrapped, tmp_path / "adapter", base_spec=str(workspace / "draft"))  # wrong base: 2 layers
    with pytest.raises(DistillSpecError, match="could not apply the adapter"):
        load_model(tmp_path / "adapter")


def test_lora_distillation_ships_an_adapter_and_a_plain_draft(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    distill(lora_config(workspace, out, steps=30, eval_every=30, save_every=10, eval_prompts=16,
                        max_new_tokens=12))
    evals = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["expected_acceptance"] > evals[0]["expected_acceptance"] + 0.02
    trained = load_file(str(out / "checkpoint" / "draft_trainable.safetensors"))
    assert trained and all("lora_" in name for name in trained)
    # the adapter, the merged draft/ folder and plain from_pretrained agree
    ids = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    merged = AutoModelForCausalLM.from_pretrained(out / "draft")
    from_adapter, _ = load_model(out / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
    # export: a full bf16 folder that plain transformers loads, and the adapter alone
    assert main(["export-draft", "--run", str(out), "--out", str(tmp_path / "full")]) == 0
    full_report = json.loads(capsys.readouterr().out)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert full_report["format"] == "full" and plain.dtype == torch.bfloat16
    assert main(["export-draft", "--run", str(out), "--out", str(tmp_path / "small"), "--format", "adapter"]) == 0
    small_report = json.loads(capsys.readouterr().out)
    assert small_report["bytes"] < full_report["bytes"] / 2
    with torch.no_grad():
        want = merged(input_ids=ids).logits
        torch.testing.assert_close(plain(input_ids=ids).logits.float(), want, atol=0.1, rtol=0.05)
        torch.testing.assert_close(load_model(tmp_path / "small")[0](input_ids=ids).logits, want,
                                   atol=0.05, rtol=0.05)
    # the adapter is a draft spec like any other, modifiers included
    target, tokenizer = load_model(workspace / "target")
    drafter = load_drafter(str(tmp_path / "small") + "@int8", target, tokenizer)
    assert drafter.model.config.num_hidden_layers == 2


def test_lora_run_resumes_exactly_and_states_its_budget(workspace, tmp_path, capsys):
    distill(lora_config(workspace, tmp_path / "whole"))
    distill(lora_config(workspace, tmp_path / "parts"), stop_at=3)
    assert main(["export-draft", "--run", str(tmp_path / "parts"), "--out", str(tmp_path / "midway"),
                 "--format", "adapter", "--checkpoint"]) == 0
    midway = json.loads(capsys.readouterr().out)
    assert midway["budget"]["steps"] == 3 and midway["budget"]["sequences"] == 12
    assert json.loads((tmp_path / "midway" / "distillspec_adapter.json").read_text())["checkpoint_step"] == 3
    # the folder records its own budget, so a copied draft still states what it cost
    assert json.loads((tmp_path / "midway" / "distillspec_export.json").read_text())["budget"] == midway["budget"]
    assert midway["recipe"] == json.loads((tmp_path / "parts" / "config.json").read_text())  # and its recipe
    # the same checkpoint as a full HF folder (LoRA merged), which loads without this package
    assert main(["export-draft", "--run", str(tmp_path / "parts"), "--out", str(tmp_path / "midway-full"),
                 "--checkpoint", "--dtype", "float32"]) == 0
    midway_full = json.loads(capsys.readouterr().out)
    assert midway_full["format"] == "full" and midway_full["checkpoint_step"] == 3
    ids = torch.randint(2, 64, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "midway-full")(input_ids=ids).logits,
                                   load_model(tmp_path / "midway")[0](input_ids=ids).logits, atol=0.05, rtol=0.05)
    distill(lora_config(workspace, tmp_path / "parts"), resume=True)
    whole = load_file(str(tmp_path / "whole" / "checkpoint" / "draft_trainable.safetensors"))
    parts = load_file(str(tmp_path / "parts" / "checkpoint" / "draft_trainable.safetensors"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    budget = run_budget(tmp_path / "parts" / "log.jsonl")
    assert budget["steps"] == 6 and budget["sequences"] == 24 and budget["sessions"] == 2 and budget["cpus"]
    # the last checkpoint, exported as an adapter, is the finished run's adapter
    assert main(["export-draft", "--run", str(tmp_path / "parts"), "--out", str(tmp_path / "last"),
                 "--format", "adapter", "--checkpoint", "--dtype", "float32"]) == 0
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "last")[0](input_ids=ids).logits,
                                   load_model(tmp_path / "parts" / "adapter")[0](input_ids=ids).logits)


def test_checkpoint_of_another_recipe_is_refused_on_resume_and_export(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    distill(lora_config(workspace, out, steps=4), stop_at=2)
    weights_file = out / "checkpoint" / "draft_trainable.safetensors"
    weights = load_file(str(weights_file))
    save_file({**weights, "model.layers.9.mlp.extra.weight": torch.zeros(2, 2)}, str(weights_file))
    with pytest.raises(DistillSpecError, match="1 tensors the draft lacks.*layers.9.mlp.extra"):
        distill(lora_config(workspace, out, steps=4), resume=True)
    assert main(["export-draft", "--run", str(out), "--out", str(tmp_path / "x"), "--format", "adapter",
                 "--checkpoint"]) == 2
    assert "does not fit this recipe's draft" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_format_that_does_not_fit_the_run_is_explained(workspace, tmp_path, capsys):
    distill(lora_config(workspace, tmp_path / "full-ft", steps=2, lora_rank=0))
    assert main(["export-draft", "--run", str(tmp_path / "full-ft"), "--out", str(tmp_path / "x"),
                 "--format", "adapter"]) == 2
    assert "has no adapter/" in capsys.readouterr().err
    assert main(["export-draft", "--run", str(tmp_path / "full-ft"), "--out", str(tmp_path / "y"),
                 "--format", "delta"]) == 2
    assert "needs a layer-subset run" in capsys.readouterr().err
    # a full fine-tuning checkpoint exports as a full folder: the finished run's draft
    assert main(["export-draft", "--run", str(tmp_path / "full-ft"), "--out", str(tmp_path / "z"), "--checkpoint",
                 "--dtype", "float32"]) == 0
    ids = torch.randint(2, 64, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "z")(input_ids=ids).logits,
                                   load_model(tmp_path / "full-ft" / "draft")[0](input_ids=ids).logits)
    capsys.readouterr()
    for fmt, reason in (("adapter", "holds no adapter"), ("delta", "--checkpoint writes full or adapter")):
        assert main(["export-draft", "--run", str(tmp_path / "full-ft"), "--out", str(tmp_path / fmt), "--format",
                     fmt, "--checkpoint"]) == 2
        assert reason in capsys.readouterr().err and not (tmp_path / fmt).exists()


def test_bad_lora_rank_is_explained(workspace, tmp_path):
    with pytest.raises(DistillSpecError, match="lora_rank must be an integer >= 0"):
        lora_config(workspace, tmp_path, lora_rank=-2).validate()


def test_int8_sampling_snapshot_is_a_merged_quantized_copy(workspace):
    from distillspec.models.adapters import sampling_snapshot
    from distillspec.models.quant import Int8Linear

    wrapped = add_lora(load_model(workspace / "draft")[0], rank=4)
    nudge(wrapped)
    before = {n: p.clone() for n, p in wrapped.named_parameters()}
    snapshot = sampling_snapshot(wrapped, "int8")
    assert sampling_snapshot(wrapped, "none") is wrapped
    assert any(isinstance(m, Int8Linear) for m in snapshot.modules())
    assert not any("lora_" in n for n, _ in snapshot.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in wrapped.named_parameters())  # the trained model is untouched
    ids = torch.randint(2, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = wrapped(input_ids=ids).logits, snapshot(input_ids=ids).logits
        plain = load_model(workspace / "draft")[0](input_ids=ids).logits
    error = (got - want).abs().max()
    assert error < 0.1 * want.abs().max()
    assert (plain - want).abs().max() > 5 * error  # negative control: the adapter is in the snapshot


def test_int8_sampling_run_resumes_exactly(workspace, tmp_path):
    whole, parts = whole_and_resumed(lambda out: lora_config(workspace, out, sample_quant="int8"), tmp_path)
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    fp32 = tmp_path / "fp32-sampling"
    distill(lora_config(workspace, fp32))
    other = trained_weights(fp32)
    assert not all(torch.equal(whole[k], other[k]) for k in whole)  # the snapshot did the sampling
