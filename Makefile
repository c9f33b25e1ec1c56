# microturn — entry points. Every target sets up what it needs first, and is idempotent.
#   make up      set up and run the whole system on this machine (Ctrl-C or `make down` stops it)
#   make test    set up and run the test suite
#   make bench   run the benchmarks (prints tables and ratios)
#   make soak    10-minute soak of the whole system: WebRTC callers, a replica kill, a NATS restart
#   make bench-recovery  output gap p50/max over 10 replica kills, with 1 and 2 replicas (~20 min)
#   make eval    score models on the interaction gym; make train: train the default model
#   make lint    ruff;  make fuzz: long fuzzing of every trust boundary
#   make protos  regenerate the Python stubs from protos/

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch on these machines; GPU images override TORCH_SPEC (e.g. a CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up down test bench eval train lint protos system-deps clean fuzz soak bench-recovery

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need (a browser, speech synthesis, audio tools); skipped when present.
SYSTEM_PKGS := chromium espeak-ng sox
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

up: install
	$(VENV)/bin/microturn up

down: install
	$(VENV)/bin/microturn down

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Long fuzzing of every trust boundary (make test runs the same targets with 60 examples each);
# the inputs each target ran are printed and written to fuzz-report.json.
FUZZ_EXAMPLES ?= 5000
fuzz: install system-deps
	MICROTURN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MICROTURN_FUZZ_REPORT=fuzz-report.json \
	  $(PY) -m pytest -m fuzz -o timeout=0 -q $(PYTEST_ARGS)

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Soak of the whole system as a user runs it (`microturn up`, synthetic WebRTC callers, a replica
# SIGKILL and a NATS restart mid-run); `make test` runs a 70 s version (tests/system/test_soak.py).
# Options: SOAK_ARGS="--duration 180 --callers 6 --report soak.json" (python -m loadtest.soak --help).
SOAK_ARGS ?=
soak: install system-deps
	$(PY) -m loadtest.soak $(SOAK_ARGS)

RECOVERY_ARGS ?=
bench-recovery: install
	$(PY) -m loadtest.recovery $(RECOVERY_ARGS)

eval: install system-deps
	$(PY) -m microturn.gym.eval

train: install system-deps
	$(PY) -m microturn.train --preset tiny-cpu

lint: install
	$(VENV)/bin/ruff check services tests benchmarks loadtest
	$(VENV)/bin/ruff format --check services tests benchmarks loadtest

protos: install
	$(PY) -m microturn.protocol.codegen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
