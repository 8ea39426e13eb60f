"""Where a measurement ran: software versions, the CPU model and the instruction-set flags
that decide bf16 speed (AMX and AVX-512 bf16 make multi-token bf16 passes cheap; AVX2-only
CPUs emulate bf16, so verification costs grow with the tokens). Every report prints it."""

from __future__ import annotations

import platform

import torch

from ..cpu import RELEVANT_FLAGS, cpu_info


def llama_cpp_version() -> str | None:
    """llama-cpp-python's version (None: not installed), read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return None


def environment() -> dict:
    import transformers

    name, flags = cpu_info()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "processor": name, "cpu_flags": list(flags), "threads": torch.get_num_threads(),
            "llama_cpp_python": llama_cpp_version(),
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def environment_line(env: dict) -> str:
    flags = ", ".join(env.get("cpu_flags") or []) or "none of " + "/".join(RELEVANT_FLAGS)
    line = (f"{env['processor']} (flags: {flags}), {env['threads']} threads, torch {env['torch']}, "
            f"transformers {env['transformers']}")
    return line + (f", llama-cpp-python {env['llama_cpp_python']}" if env.get("llama_cpp_python") else "")
