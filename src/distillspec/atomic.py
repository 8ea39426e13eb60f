"""Write a folder so that readers see the old version or the new one, never a mix."""

from __future__ import annotations

import itertools
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def aside(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}")


@contextmanager
def atomic_folder(final: Path):
    """Yield a temporary sibling folder to fill; on success it replaces `final`.

    The old `final` is renamed to `.NAME.old` just before the new folder takes its name,
    and removed after; a crash between those two renames leaves `.NAME.old` complete (see
    `recover_folder`). An exception inside the block leaves `final` untouched.
    """
    final = Path(final)
    tmp, old = aside(final, "tmp"), aside(final, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(final: Path) -> None:
    """After a crash between the two renames of `atomic_folder`, restore the old folder."""
    old = aside(Path(final), "old")
    if not Path(final).exists() and old.exists():
        old.rename(final)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` so that readers see the old text or the new, never a part: a sibling
    temporary file, flushed, then renamed over it (a rename within a folder is atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path_for(path: Path) -> Path:
    """A sibling of `path` to write before renaming it into place (hidden, tagged with the
    process id so that two writers never share one, and a leftover names its owner)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}")


_counter = itertools.count()


@contextmanager
def atomic_file(final: Path):
    """Yield a temporary sibling path to write; on success it is renamed to `final`, on an
    exception removed (an interrupted export never leaves a half-written model file)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path_for(final)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(final)
