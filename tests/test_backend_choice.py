"""Which backend 'auto' picks, and that it names the option that kept a run on torch."""

import pytest

from distillspec.errors import DistillSpecError
from distillspec.models.backend_choice import choose_backend, names_gguf


def test_a_gguf_target_on_the_cpu_runs_on_llama_cpp(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert choose_backend("auto", "qwen2.5-coder-1.5b", ["default"])[0] == "llama.cpp"
    assert choose_backend("auto", "model.gguf", ["prompt-lookup", "draft.gguf@head=4096"])[0] == "llama.cpp"


@pytest.mark.parametrize("target, drafts, options, said", [
    ("some/hf-folder", [], {}, "is not a GGUF"),
    ("smollm2-135m", [], {"device": "cuda"}, "--device cuda"),
    ("smollm2-135m", [], {"target_quant": "int8"}, "--target-quant int8"),
    ("smollm2-135m", [], {"draft_quant": "w8a8"}, "--draft-quant w8a8"),
    ("smollm2-135m", [], {"linear_layout": "compiled"}, "--linear-layout compiled"),
    ("smollm2-135m", ["layers:0,1"], {}, "runs on torch only"),
    ("smollm2-135m", ["smollm2-135m@int8"], {}, "runs on torch only"),
    ("smollm2-135m", ["default"], {}, "runs on torch only"),  # its shipped draft is a layer-subset delta
])
def test_what_only_torch_serves_keeps_auto_on_torch_and_is_named(monkeypatch, target, drafts, options, said):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    backend, reason = choose_backend("auto", target, drafts, **options)
    assert backend == "torch" and said in reason


def test_without_llama_cpp_installed_auto_stays_on_torch(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    backend, reason = choose_backend("auto", "smollm2-135m", [])
    assert backend == "torch" and "not installed" in reason


def test_an_explicit_backend_is_kept_and_a_bad_one_refused():
    assert choose_backend("torch", "smollm2-135m", []) == ("torch", "as asked")
    assert choose_backend("llama.cpp", "some/folder", [])[0] == "llama.cpp"  # its loader then explains
    with pytest.raises(DistillSpecError, match="unknown backend 'vllm'"):
        choose_backend("vllm", "smollm2-135m", [])


def test_names_gguf_does_not_open_anything():
    assert names_gguf("qwen2.5-coder-0.5b") and names_gguf("/nowhere/x.gguf")
    assert not names_gguf("/nowhere/folder") and not names_gguf("Qwen/Qwen2.5-0.5B")
