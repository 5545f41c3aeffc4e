# One-command set-up on a fresh machine: every target creates the venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export RLVR_SHARED := $(SHARED)

.PHONY: install install-base system-deps demo test lint clean

# Everything the tests need: the package and its dev, serve, export and docs extras (about 4 GB with
# TensorFlow and torch). `make demo` installs the package alone (install-base).
install: $(VENV)/.installed
install-base: $(VENV)/.installed-base

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-base: setup.py | $(VENV)/.created
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: setup.py | $(VENV)/.created
	$(PY) -m pip install -q -e ".[dev,serve,export,docs]"
	touch $@ $(VENV)/.installed-base

# What the tests need besides Python: bubblewrap (the code-reward sandbox runs every program under it;
# its security tests fail without it) and Prometheus (promtool checks the alert rules, the serving tests
# have it scrape /metrics). Run as root, this installs the missing ones with apt-get; otherwise it stops
# with the command to run. RLVR_ALLOW_MISSING_SANDBOX=1 goes on without bubblewrap (its tests skipped).
SYSTEM_TOOLS := bwrap=bubblewrap promtool=prometheus prometheus=prometheus
system-deps:
	@missing=; for tool in $(SYSTEM_TOOLS); do command -v $${tool%%=*} >/dev/null || \
		case "$$missing " in *" $${tool#*=} "*) ;; *) missing="$$missing $${tool#*=}";; esac; done; \
	if [ "$$RLVR_ALLOW_MISSING_SANDBOX" = 1 ]; then kept=; for package in $$missing; do \
		if [ $$package = bubblewrap ]; then echo "warning: no bubblewrap: its tests will be skipped"; \
		else kept="$$kept $$package"; fi; done; missing=$$kept; fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing for the tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	else \
		echo "error: the tests need$$missing; install with: sudo apt-get install -y$$missing" >&2; \
		exit 1; \
	fi

# The main job: GRPO on SST-2 sentiment with the real SmolLM2 weights and data, from ../shared where they
# are (offline), else from the Hugging Face hub; on this machine's CPU (about 10 minutes on 2 cores).
# It needs the package alone, none of the extras.
WORKDIR ?= runs/quickstart
demo: install-base
	$(PY) scripts/train.py --config=configs/quickstart.py --workdir=$(WORKDIR)

# Two workers, each test file on one (module fixtures such as the serving process start once): most
# tests wait on single-threaded XLA compiles and subprocesses, so two workers keep both cores busy.
TEST_WORKERS ?= 2
test: system-deps install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache docs/_build docs/_generated
