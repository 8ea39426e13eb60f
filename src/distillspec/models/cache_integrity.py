"""The converted-model cache checks itself: a digest record, and no leaked temporaries.

Why: random bytes written into a cached `model.safetensors` loaded without a word and
generated garbage; a truncated one failed on every run until the folder was deleted by
hand; and a conversion killed mid-write left a large temporary folder that nothing
removed. Conversion now records each file's size, sha256
and modification time (`MANIFEST`). A load checks sizes and times, which costs a few
`stat` calls, and hashes a file only when its time changed since it was recorded. A folder
that fails is converted again from its verified GGUF, and the caller says so.

Temporary folders carry the writing process's id in their name (`temporary_prefix`), so
the next use of the cache removes those whose process is gone, and old unnamed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

MANIFEST = "distillspec-manifest.json"
#: a temporary folder without a process id in its name (older versions) is stale after this
STALE_SECONDS = 30 * 60
_BLOCK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size, sha256 and modification time of every file in `folder` (flat, as HF writes)."""
    folder = Path(folder)
    entries = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            stat = path.stat()
            entries[path.name] = {"size": stat.st_size, "sha256": file_sha256(path), "mtime_ns": stat.st_mtime_ns}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": entries}, indent=1))


def manifest_problem(folder: Path) -> str | None:
    """None when every recorded file is there with its recorded size and content; otherwise
    what is wrong, in words. Hashes only files whose modification time changed."""
    folder = Path(folder)
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no integrity record (written by an older version, or cut short)"
    for name, entry in entries.items():
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != entry["size"]:
            return f"{name} has {stat.st_size:,} bytes, {entry['size']:,} were written"
        if stat.st_mtime_ns != entry["mtime_ns"] and file_sha256(path) != entry["sha256"]:
            return f"{name} changed since it was written (its sha256 differs)"
    return None


def temporary_prefix(final: Path) -> str:
    """The name prefix of a temporary sibling of `final` written by this process."""
    return f".{Path(final).name}.tmp-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(parent: Path, now: float | None = None) -> list[Path]:
    """Temporary folders and files in `parent` that no live process is writing."""
    now = time.time() if now is None else now
    stale = []
    if not Path(parent).is_dir():
        return stale
    for path in Path(parent).iterdir():
        match = re.match(r"^\..+\.tmp-(\d+)(?:-|$)", path.name)  # '.NAME.tmp-PID' or '.NAME.tmp-PID-xyz'
        if match is not None:
            if not process_alive(int(match.group(1))):
                stale.append(path)
        elif re.match(r"^\..+\.tmp-", path.name) and now - path.stat().st_mtime > STALE_SECONDS:
            stale.append(path)
    return stale


def remove_stale_temporaries(parent: Path) -> int:
    """Delete `stale_temporaries(parent)`; returns how many bytes that freed."""
    freed = 0
    for path in stale_temporaries(parent):
        if path.is_dir():
            freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path, ignore_errors=True)
        else:
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
    return freed


def built_once(cached: Path, file_name: str, build: Callable[[Path], None], what: str) -> Path:
    """`cached / file_name`, built on first use and whenever the cached folder fails its
    integrity record (`manifest_problem`), and reused otherwise.

    Why: the drafts llama.cpp loads are built from what a package ships (an adapter, a GGUF
    delta) into the cache, and a damaged build would load without a word. `build(folder)`
    writes `file_name` (and anything else) into a fresh folder; the folder's sha256 record
    is written and it replaces the old one in one rename (`atomic_folder`). A lock file
    beside the folder makes a second process (a server and a benchmark started together)
    wait for the first one's build and use it. `what` names the build in the message said
    on standard error.
    """
    from filelock import FileLock

    from ..atomic import atomic_folder

    cached = Path(cached)
    if cached.is_dir() and manifest_problem(cached) is None:
        return cached / file_name
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cached.with_name(f".{cached.name}.lock"))):
        problem = manifest_problem(cached) if cached.is_dir() else "it is not built yet"
        if problem is None:  # another process built it while this one waited
            return cached / file_name
        print(f"building {what} ({problem})", file=sys.stderr)
        with atomic_folder(cached) as tmp:
            build(tmp)
            write_manifest(tmp)
    return cached / file_name
