"""Build llama.cpp's own command-line tools for the benchmark, from the source llama-cpp-python vendors.

Why: the bench compares our speculative decoding with llama.cpp's own
(`llama-speculative-simple`, and `llama-server` for the serve benchmark), which
llama-cpp-python does not ship. Building it from the
same source package (the same llama.cpp commit) with the same instruction sets as the
installed library (`llama_cmake_args.py`) means both sides run the same kernels. This is a
benchmark dependency, not the product's: `make bench-tools` runs it (about 4 minutes on 2
cores); the bench finds the result in the cache folder and leaves that row out without it.

Usage: python tools/build_llama_tools.py [--version 0.3.36] [--out DIR]
Prints the folder that holds the binaries.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from llama_cmake_args import cmake_args, cpu_flags  # noqa: E402

#: the tools the benchmarks run (llama-server: the serve benchmark's peer)
TARGETS = ("llama-speculative-simple", "llama-bench", "llama-server")
DEFAULT_VERSION = "0.3.36"


def cache_root() -> Path:
    return Path(os.environ.get("DISTILLSPEC_CACHE", Path.home() / ".cache" / "distillspec"))


def tools_folder(version: str, args: list[str]) -> Path:
    """Where the tools built from `version` with `args` live (one folder per CPU flag set)."""
    digest = hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]
    return cache_root() / "llama-tools" / f"{version}-{digest}"


def fetch_source(version: str, into: Path) -> Path:
    """llama-cpp-python's source package, unpacked; returns its vendored llama.cpp folder."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(into)], check=True)
    archive = next(into.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"


def build(version: str, out: Path) -> Path:
    """Compile TARGETS into `out`; the compiler's output goes to out/build.log."""
    args = cmake_args(cpu_flags(), platform.machine())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-tools-") as scratch, open(out / "build.log", "w") as log:
        source = fetch_source(version, Path(scratch))
        build_dir = Path(scratch) / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", *args],
                       check=True, stdout=log, stderr=log)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1), "--target", *TARGETS],
                       check=True, stdout=log, stderr=log)
        for name in TARGETS:
            built = build_dir / "bin" / name
            temporary = out / f".{name}.tmp"
            temporary.write_bytes(built.read_bytes())
            temporary.chmod(0o755)
            temporary.replace(out / name)
        (out / "cmake-args.txt").write_text(" ".join(args) + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=DEFAULT_VERSION, help="llama-cpp-python version whose llama.cpp to build")
    parser.add_argument("--out", type=Path, default=None, help="folder for the binaries [default: the cache]")
    options = parser.parse_args()
    out = options.out or tools_folder(options.version, cmake_args(cpu_flags(), platform.machine()))
    if not all((out / name).is_file() for name in TARGETS):
        build(options.version, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
