"""`cache_integrity.built_once`: the cached builds of shipped drafts check themselves."""

import pytest

from distillspec.models.cache_integrity import MANIFEST, built_once


def counting_build(calls: list, content: bytes = b"weights"):
    def build(folder):
        calls.append(folder)
        (folder / "draft.gguf").write_bytes(content)
    return build


def test_a_build_is_made_once_and_reused(tmp_path, capsys):
    calls = []
    first = built_once(tmp_path / "c", "draft.gguf", counting_build(calls), "the test draft")
    assert first == tmp_path / "c" / "draft.gguf" and first.read_bytes() == b"weights"
    assert (tmp_path / "c" / MANIFEST).is_file()
    assert "building the test draft (it is not built yet)" in capsys.readouterr().err
    assert built_once(tmp_path / "c", "draft.gguf", counting_build(calls), "the test draft") == first
    assert len(calls) == 1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("damage, said", [
    (lambda path: path.write_bytes(b"weighTs"), "changed since it was written"),
    (lambda path: path.write_bytes(b"w"), "has 1 bytes, 7 were written"),
    (lambda path: path.unlink(), "draft.gguf is missing"),
])
def test_a_damaged_build_is_made_again_and_said(tmp_path, capsys, damage, said):
    calls = []
    built = built_once(tmp_path / "c", "draft.gguf", counting_build(calls), "the test draft")
    damage(built)
    capsys.readouterr()
    assert built_once(tmp_path / "c", "draft.gguf", counting_build(calls), "the test draft").read_bytes() == b"weights"
    assert len(calls) == 2 and said in capsys.readouterr().err


def test_a_failed_build_leaves_the_old_one_and_no_temporaries(tmp_path):
    built = built_once(tmp_path / "c", "draft.gguf", counting_build([]), "the test draft")
    (tmp_path / "c" / MANIFEST).unlink()  # forces a rebuild, which fails half way

    def failing(folder):
        (folder / "draft.gguf").write_bytes(b"half")
        raise RuntimeError("quantizer died")

    with pytest.raises(RuntimeError, match="quantizer died"):
        built_once(tmp_path / "c", "draft.gguf", failing, "the test draft")
    assert built.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["c"]


def test_a_second_process_waits_for_the_first_build_and_uses_it(tmp_path):
    """Two processes asking at once: one builds, the other waits on the lock and reuses the
    build (without the lock both would see nothing built and build, each removing the other's
    temporary folder)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from distillspec.models.cache_integrity import built_once

        def build(folder):
            time.sleep(1.0)
            (folder / "draft.gguf").write_bytes(b"weights")
            with open({str(tmp_path / "builds.txt")!r}, "a") as log:
                log.write("built\\n")

        print(built_once(Path({str(tmp_path / "c")!r}), "draft.gguf", build, "the test draft").read_bytes())
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert [out.strip() for out, _ in outputs] == ["b'weights'"] * 2
    assert (tmp_path / "builds.txt").read_text().count("built") == 1
