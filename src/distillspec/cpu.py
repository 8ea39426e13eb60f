"""What the CPU can do, read from /proc/cpuinfo (what lscpu reads).

A leaf: the instruction-set flags decide bf16 speed (AMX and AVX-512 bf16 make bf16
products with many rows cheap; AVX2-only CPUs emulate them at a cost per row), so both
the model layout (`models.layout`) and every report (`eval.environment`) need them.
"""

from __future__ import annotations

import platform
from functools import lru_cache

#: CPU flags that change what speculative decoding can gain on a CPU.
RELEVANT_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(model name, the relevant flags it has)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if flags and name:
                    break
    except OSError:
        pass
    return name, tuple(flag for flag in RELEVANT_FLAGS if flag in flags)


def has_native_bf16() -> bool:
    """True where bf16 matrix products run in hardware (AMX or AVX-512 bf16)."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()[1]))
