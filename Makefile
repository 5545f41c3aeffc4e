# One-command set-up on a fresh machine: every target creates the venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export RLVR_SHARED := $(SHARED)

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,serve,export,docs]"
	touch $@

# The main job on an offline default: GRPO on procedural arithmetic with the real SmolLM2 weights in
# ../shared/models, on this machine's CPU (about 8 minutes on 2 cores).
WORKDIR ?= runs/quickstart
demo: install
	$(PY) scripts/train.py --config=configs/quickstart.py --workdir=$(WORKDIR)

# Two workers, each test file on one (module fixtures such as the serving process start once): most
# tests wait on single-threaded XLA compiles and subprocesses, so two workers keep both cores busy.
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache docs/_build docs/_generated
