"""Print the CMAKE_ARGS that build llama-cpp-python's ggml for the CPU of this machine.

Why not GGML_NATIVE: on the Intel Xeon of this machine kind, -march=native compiles ggml's
AMX kernels, and the VM does not grant AMX tile state, so the first product dies with
SIGILL (../shared/MODELS.md). An AVX-512 build, in turn, cannot run on the AVX2-only EPYC.
So the instruction sets are named one by one from /proc/cpuinfo, AMX never. Standalone (no
import of distillspec): the Makefile runs it before anything is installed.
"""

from __future__ import annotations

import platform
import sys

#: ggml CMake option -> the /proc/cpuinfo flag that allows it (x86-64 only)
X86_OPTIONS = {
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_BMI2": "bmi2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}
#: what the build leaves out whatever the CPU says (see the module docstring)
ALWAYS_OFF = ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "LLAVA_BUILD")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_args(flags: set[str], machine: str) -> list[str]:
    """-D options for this CPU: every x86 instruction set it has, none it lacks."""
    args = [f"-D{option}=OFF" for option in ALWAYS_OFF]
    if machine in ("x86_64", "AMD64"):
        args += [f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in X86_OPTIONS.items()]
    return args


if __name__ == "__main__":
    sys.stdout.write(" ".join(cmake_args(cpu_flags(), platform.machine())) + "\n")
