"""llama-cpp-python's build flags follow the CPU: AVX-512 only where the CPU has it, AMX never."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "llama_cmake_args.py"
spec = importlib.util.spec_from_file_location("llama_cmake_args", SCRIPT)
flags_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flags_script)

AVX2_EPYC = {"avx", "avx2", "fma", "f16c", "bmi2"}
AMX_XEON = AVX2_EPYC | {"avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


def options(flags, machine="x86_64"):
    return dict(arg[2:].split("=") for arg in flags_script.cmake_args(flags, machine))


def test_an_avx2_cpu_gets_no_avx512():
    got = options(AVX2_EPYC)
    assert got["GGML_AVX2"] == got["GGML_FMA"] == "ON"
    assert got["GGML_AVX512"] == got["GGML_AVX512_BF16"] == "OFF"


def test_an_amx_xeon_gets_avx512_and_never_amx_or_native():
    got = options(AMX_XEON)
    assert got["GGML_AVX512"] == got["GGML_AVX512_VNNI"] == got["GGML_AVX512_BF16"] == "ON"
    assert got["GGML_AMX_TILE"] == got["GGML_AMX_INT8"] == got["GGML_AMX_BF16"] == got["GGML_NATIVE"] == "OFF"


def test_other_machines_get_only_what_is_always_off():
    assert set(options(set(), "aarch64")) == set(flags_script.ALWAYS_OFF)


def test_this_machine_reads_its_own_flags():
    flags = flags_script.cpu_flags()
    got = options(flags)
    assert got["GGML_AVX2"] == ("ON" if "avx2" in flags else "OFF")
