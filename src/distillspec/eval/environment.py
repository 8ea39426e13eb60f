"""Where a measurement ran: software versions, the CPU model and the instruction-set flags
that decide bf16 speed (AMX and AVX-512 bf16 make multi-token bf16 passes cheap; AVX2-only
CPUs emulate bf16, so verification costs grow with the tokens). Every report prints it."""

from __future__ import annotations

import platform

import torch

#: CPU flags that change what speculative decoding can gain on a CPU.
RELEVANT_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def cpu_info() -> tuple[str, list[str]]:
    """(model name, the relevant flags it has) from /proc/cpuinfo (what lscpu reads)."""
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
    return name, [flag for flag in RELEVANT_FLAGS if flag in flags]


def environment() -> dict:
    import transformers

    name, flags = cpu_info()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "processor": name, "cpu_flags": flags, "threads": torch.get_num_threads(),
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def environment_line(env: dict) -> str:
    flags = ", ".join(env.get("cpu_flags") or []) or "none of " + "/".join(RELEVANT_FLAGS)
    return (f"{env['processor']} (flags: {flags}), {env['threads']} threads, torch {env['torch']}, "
            f"transformers {env['transformers']}")
