# Flotilla: two commands on a fresh machine.
#   make run    installs into .venv, writes the digits example data, runs the job locally
#   make test   installs into .venv and runs the test suite (what .ci/run calls)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml to the CPU build; one pip call resolves
# everything together (installing packages one after another can break pip check).
STAMP := $(VENV)/.installed

.PHONY: install run data test e2e lint typecheck bench bench-env serve clean chart-check

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
	$(BIN)/pytest

# Against a real cluster: KUBECONFIG=~/.kube/config make e2e (skipped without one).
e2e: install
	$(BIN)/pytest -m e2e tests/e2e -rs

# The Helm chart: files, and rendered by Helm's engine (helm-sdkpy, Python >= 3.12, in
# .venv-helm, which tests/chart builds) and validated for Kubernetes 1.30. See charts/README.md.
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
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI="$(MLFLOW_TRACKING_URI)" \
		$(BIN)/mlflow models serve -m "models:/$(MODEL)@$(ALIAS)" --env-manager local \
		-h 127.0.0.1 -p $(SERVE_PORT)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .venv-helm .flotilla examples/data mlruns .mypy_cache .pytest_cache .ruff_cache
