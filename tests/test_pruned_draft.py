"""Pruned drafts: a layer cut saved as its own model, then fully fine-tuned with its
embedding and head frozen (`freeze_embeddings`), as issue 11's pruned 0.5B draft is."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from distillspec.cli import main
from distillspec.distill.config import DistillConfig
from distillspec.errors import DistillSpecError

from conftest import distill_workspace, tiny_distill_config, tiny_llama, trained_weights, whole_and_resumed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = distill_workspace(tmp_path_factory, "pruned")
    # the draft's family: its own 4-layer model (other weights than the target's), cut to 2 layers
    tiny_llama(7, vocab_size=64, layers=4, eos_token_id=1).save_pretrained(root / "source")
    assert main(["make-draft", "--target", str(root / "target"), "--from-draft", str(root / "source"),
                 "--layers", "0,3", "--out", str(root / "cut")]) == 0
    return root


def pruned_config(workspace, out, **overrides):
    values = dict(draft=str(workspace / "cut"), batch_size=4, lr=1e-2, eval_prompts=8, spec_eval_prompts=0,
                  data_source="draft", divergence="fkl", freeze_embeddings=True)
    return tiny_distill_config(workspace, out, **{**values, **overrides})


def test_frozen_embeddings_keep_the_vocabulary_and_train_the_blocks(workspace, tmp_path):
    from distillspec.distill.trainer import distill

    before = AutoModelForCausalLM.from_pretrained(workspace / "cut")
    assert before.config.num_hidden_layers == 2
    distill(pruned_config(workspace, tmp_path / "frozen", steps=4, save_every=4))
    saved = trained_weights(tmp_path / "frozen")
    assert saved and not any("embed_tokens" in n or "lm_head" in n for n in saved)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "frozen" / "draft")
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    assert torch.equal(after.get_output_embeddings().weight, before.get_output_embeddings().weight)
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    assert moved and all(".layers." in n or "norm" in n for n in moved)
    # negative control: without the flag the embedding and head train too
    distill(pruned_config(workspace, tmp_path / "free", steps=4, save_every=4, freeze_embeddings=False))
    free = trained_weights(tmp_path / "free")
    assert any("embed_tokens" in n for n in free) and any("lm_head" in n for n in free)


def test_frozen_embedding_run_resumes_exactly(workspace, tmp_path):
    whole, parts = whole_and_resumed(lambda out: pruned_config(workspace, out, steps=5, save_every=5), tmp_path)
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


def test_frozen_embeddings_with_lora_is_refused(workspace, tmp_path):
    config = pruned_config(workspace, tmp_path / "lora", lora_rank=4)
    with pytest.raises(DistillSpecError, match="freeze_embeddings applies to full fine-tuning"):
        config.validate()


def test_freeze_embeddings_is_a_cli_option(workspace, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["distill", "--target", str(workspace / "target"), "--prompts", str(workspace / "prompts.jsonl"),
                 "--draft", str(workspace / "cut"), "--freeze-embeddings", "--steps", "2", "--max-new-tokens", "6",
                 "--eval-prompts", "0", "--no-bf16", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["freeze_embeddings"] is True
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    cut = AutoModelForCausalLM.from_pretrained(workspace / "cut")
    vocab = cut.get_input_embeddings().weight.numel() + cut.get_output_embeddings().weight.numel()
    assert start["trainable_parameters"] == sum(p.numel() for p in cut.parameters()) - vocab
    assert DistillConfig.from_file(out / "config.json").freeze_embeddings
