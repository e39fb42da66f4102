# Flotilla: two commands on a fresh machine.
#   make run    installs into .venv, writes the digits example data, runs the job locally
#   make test   installs into .venv and runs the test suite (what .ci/run calls)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml to the CPU build; one pip call resolves
# everything together (installing packages one after another can break pip check).
STAMP := $(VENV)/.installed

.PHONY: install run data test e2e lint typecheck bench bench-env serve clean chart-check \
	builder images push lint-images

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

data: install
	$(BIN)/flotilla examples digits --out examples/data/digits --sites site-a,site-b,site-c,site-d

run: data
	$(BIN)/flotilla run examples/digits.yaml --summary-json .flotilla/digits-summary.json

test: install
	$(BIN)/ruff check operator tests bench charts docs
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -m "not e2e" --durations=25

# On a real Kubernetes API server (tests/e2e/run.sh): the control plane of ../shared/k8s,
# started for the run, when KUBECONFIG is unset; else KUBECONFIG's cluster.
e2e: install
	PYTEST=$(BIN)/pytest bash tests/e2e/run.sh

# The Helm chart: files, and rendered by Helm's engine (helm-sdkpy, Python >= 3.12, in
# .venv-helm, which tests/chart builds) and validated for Kubernetes 1.28 and 1.30 (strict
# schemas, tests/chart/conftest.py KUBERNETES_VERSIONS). See charts/README.md.
chart-check: install
	$(BIN)/ruff check tests/chart
	FLOTILLA_CHART_RENDER=required $(BIN)/pytest tests/chart -rs

lint: install
	$(BIN)/ruff check operator tests bench charts docs
	$(BIN)/ruff format --check operator tests bench charts docs/*.py

typecheck: install
	$(BIN)/mypy

# Benchmarks (bench/README.md): ratios measured in one run, never pass/fail. Flower is
# not a project dependency: it lives only in .venv-bench, with the same CPU torch and
# the project, plus the profilers used when a target is missed.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_CLIENTS ?= 2,8,32
FLOWER_CLIENTS ?= 2,8

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet 'torch==2.13.0' 'flwr==1.42.0' -e '.[examples]' \
		'py-spy==0.4.3' 'pyinstrument==5.1.3'
	$(BENCH_BIN)/pip check
	touch $(BENCH_STAMP)

# About 15-20 minutes on 2 cores; runs that would not fit in free memory are reported, not run.
bench: bench-env
	$(BENCH_BIN)/python bench/round_bench.py --models 10m,50m --clients $(BENCH_CLIENTS)
	$(BENCH_BIN)/python bench/wire_bench.py
	$(BENCH_BIN)/python bench/compare_flower.py --models cnn,10m --clients $(FLOWER_CLIENTS)

# Serve the model the last `make run` registered (models:/digits@candidate) on port 5001.
MODEL ?= digits
ALIAS ?= candidate
SERVE_PORT ?= 5001
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
serve: install
	MLFLOW_TRACKING_URI="$(MLFLOW_TRACKING_URI)" $(BIN)/flotilla serve \
		--model-uri "models:/$(MODEL)@$(ALIAS)" --host 127.0.0.1 --port $(SERVE_PORT)

# Edge images (edge-images/README.md). Needs Docker with buildx and a builder that can do
# several platforms (`make builder`; QEMU for the other architecture). The names are the
# operator's defaults (DEFAULT_IMAGE, DEFAULT_CUDA_IMAGE in operator/flotilla/api/cluster.py)
# and the chart's operator image; tests/edge_images checks that they stay the same.
#   make images                      build all, as OCI archives under .images/ (no registry)
#   make push REGISTRY=... VERSION=... build and push all
REGISTRY ?= ghcr.io/flotilla-dev
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
RUNTIME_IMAGE := flotilla
CLIENT_IMAGE := flotilla-client
CUDA_IMAGE := flotilla-cuda
OPERATOR_IMAGE := flotilla-operator
PLATFORMS ?= linux/amd64,linux/arm64
CUDA_PLATFORMS ?= linux/amd64
BUILDER ?= flotilla
IMAGES_DIR ?= .images
# Extra flags for every build, and for the CUDA one only (edge-images/README.md), e.g.
# CUDA_BUILD_ARGS="--build-arg CUDA_IMAGE=... --build-arg TORCH_INDEX_URL=...".
BUILD_ARGS ?=
CUDA_BUILD_ARGS ?=
BUILDX := docker buildx build --builder $(BUILDER) --build-arg VERSION=$(VERSION) $(BUILD_ARGS)

# $(call image,NAME,DOCKERFILE,TARGET,PLATFORMS,OUTPUT FLAGS)
image = $(BUILDX) --file edge-images/$(2)/Dockerfile --target $(3) --platform $(4) \
	--tag $(REGISTRY)/$(1):$(VERSION) $(5) .
# A multi-platform result cannot be --load'ed into the local engine: `images` writes OCI
# archives (docker-container builder), `push` sends the same build to the registry.
oci = --output type=oci,dest=$(IMAGES_DIR)/$(1)-$(VERSION).tar

builder:
	docker buildx inspect $(BUILDER) >/dev/null 2>&1 || \
		docker buildx create --name $(BUILDER) --driver docker-container --bootstrap

images: builder
	mkdir -p $(IMAGES_DIR)
	$(call image,$(OPERATOR_IMAGE),operator,operator,$(PLATFORMS),$(call oci,$(OPERATOR_IMAGE)))
	$(call image,$(RUNTIME_IMAGE),runtime,aggregator,$(PLATFORMS),$(call oci,$(RUNTIME_IMAGE)))
	$(call image,$(CLIENT_IMAGE),runtime,client,$(PLATFORMS),$(call oci,$(CLIENT_IMAGE)))
	$(call image,$(CUDA_IMAGE),cuda,cuda-client,$(CUDA_PLATFORMS),$(call oci,$(CUDA_IMAGE)) $(CUDA_BUILD_ARGS))

push: builder
	$(call image,$(OPERATOR_IMAGE),operator,operator,$(PLATFORMS),--push)
	$(call image,$(RUNTIME_IMAGE),runtime,aggregator,$(PLATFORMS),--push)
	$(call image,$(CLIENT_IMAGE),runtime,client,$(PLATFORMS),--push)
	$(call image,$(CUDA_IMAGE),cuda,cuda-client,$(CUDA_PLATFORMS),--push $(CUDA_BUILD_ARGS))

# No Docker engine needed: hadolint (from the dev extra) and the checks in tests/edge_images.
lint-images: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/edge_images -rs

clean:
	rm -rf $(VENV) $(BENCH_VENV) .venv-helm .images .flotilla examples/data mlruns .mypy_cache .pytest_cache .ruff_cache
