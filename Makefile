# Predictive customer indicators. `make` (or `make help`) lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(VENV)/bin
DATA ?= data
# A data directory owns its MLflow store: mlflow/ for data/, $(DATA)/mlflow for any other.
MLFLOW_DIR ?= $(if $(filter data data/ ./data,$(DATA)),mlflow,$(DATA)/mlflow)
CUSTOMERS ?= 20000
SEED ?= 42
HISTORY_START ?= 2023-11-01
HISTORY_DAYS ?= 1095
TRIALS ?= 8
PORT ?= 3000
MLFLOW_PORT ?= 5000
FEAST_PORT ?= 8888
NOTEBOOK_PORT ?= 8889
NOTEBOOK_TOKEN ?=
LOAD_SECONDS ?= 600

export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := True
export DO_NOT_TRACK := 1
export FEAST_USAGE := False
export PYTHONDONTWRITEBYTECODE :=
export UV_LINK_MODE := copy

.PHONY: help setup train data features serve test test-all test-services bench bench-events bench-train bench-serve bench-short-history bench-cdnow bench-backtest load-test bento report lint mlflow-ui feast-ui notebooks clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST) \
		| sed -e 's|$$(DATA)|$(DATA)|g' -e 's|$$(MLFLOW_DIR)|$(MLFLOW_DIR)|g' -e 's|$$(PORT)|$(PORT)|g' \
			-e 's|$$(MLFLOW_PORT)|$(MLFLOW_PORT)|g' -e 's|$$(FEAST_PORT)|$(FEAST_PORT)|g' -e 's|$$(NOTEBOOK_PORT)|$(NOTEBOOK_PORT)|g'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced ## Create .venv from nothing (exact versions from uv.lock)

data: setup ## Generate synthetic customers into $(DATA)/ unless data is already there
	@if [ -f $(DATA)/raw/transactions.parquet ]; then echo "data present in $(DATA)/raw"; \
	else $(RUN)/indicators generate --customers $(CUSTOMERS) --seed $(SEED) \
		--start $(HISTORY_START) --days $(HISTORY_DAYS) --out $(DATA); fi

features: data ## Build feature snapshots, apply the Feast repo, write latest values online
	$(RUN)/indicators features --data-dir $(DATA)

train: data ## The main job: data if none, features, tuned models, backtest, registry, summary
	$(RUN)/indicators train --data-dir $(DATA) --mlflow-dir $(MLFLOW_DIR) --trials $(TRIALS) --seed $(SEED)

serve: setup ## Serve the endpoint on 127.0.0.1:$(PORT) (after make train); the first run prints a local API key
	@$(RUN)/indicators api-key local --port $(PORT) --data-dir $(DATA)
	$(RUN)/indicators serve --port $(PORT) --data-dir $(DATA) --mlflow-dir $(MLFLOW_DIR)

bento: setup ## Build the endpoint into a Bento, offline (pinned requirements exported from uv.lock)
	@mkdir -p build
	$(UV) export --frozen --no-dev --no-hashes --no-emit-project --quiet -o build/requirements.txt
	PATH="$(abspath $(TOOLS))/bin:$$PATH" UV_OFFLINE=1 $(RUN)/bentoml build .

test: setup ## Run the fast test suite (what CI runs)
	$(RUN)/pytest -q

test-all: setup ## Run every test, including the slow ones
	$(RUN)/pytest -q -m ""

test-services: setup ## Tests against local PostgreSQL and Redis (production profile)
	$(RUN)/pytest -q -m services

bench: setup ## Data/feature-store (100k, 1M) and serving benchmarks -> bench/results.json, bench/serve_results.json
	$(RUN)/python -m bench.run --out bench/results.json
	$(MAKE) bench-serve

bench-serve: setup ## Serving benchmark (/profile latency, throughput, in-process floor, batch) -> bench/serve_results.json
	@test -f $(MLFLOW_DIR)/mlflow.db || $(MAKE) train
	$(RUN)/python -m bench.serve --data-dir $(DATA) --mlflow-dir $(MLFLOW_DIR) --out bench/serve_results.json

load-test: setup ## Bounded load test on loopback: 1- and 100-customer /profile calls mixed (LOAD_SECONDS, default 600) -> bench/load_results.json
	@test -f $(MLFLOW_DIR)/mlflow.db || $(MAKE) train
	INDICATORS_MLFLOW_DIR=$(MLFLOW_DIR) $(RUN)/python -m bench.load --data-dir $(DATA) --seconds $(LOAD_SECONDS) --out bench/load_results.json

bench-events: setup ## Events benchmark: accepted/s (batches of 1, 100), event-to-fresh-profile, /profile under event load, exactness -> bench/events_results.json
	@test -f $(MLFLOW_DIR)/mlflow.db || $(MAKE) train
	INDICATORS_MLFLOW_DIR=$(MLFLOW_DIR) $(RUN)/python -m bench.events --data-dir $(DATA) --out bench/events_results.json

bench-train: setup ## Training benchmark at 100k customers -> bench/train_results.json
	$(RUN)/python -m bench.train --customers 100000 --out bench/train_results.json

bench-short-history: setup ## Six months of real data (CDNOW): train + score against the year after -> bench/short_history_results.json
	$(RUN)/python -m bench.short_history --out bench/short_history_results.json

bench-cdnow: setup ## CDNOW 39/39 weeks: indicators backtest (train + score up to the cutoff) beside BG/NBD and Pareto/NBD -> bench/cdnow_split_results.json
	$(RUN)/python -m bench.cdnow_split --out bench/cdnow_split_results.json

bench-backtest: setup ## indicators backtest on a 3-column log (customer_id, timestamp, amount), 900 generated customers -> bench/backtest_minimal_results.json
	$(RUN)/python -m bench.backtest_minimal --out bench/backtest_minimal_results.json

lint: setup ## Ruff lint
	$(RUN)/ruff check .

report: setup ## Print where the latest training report (HTML) is
	@$(RUN)/indicators report --data-dir $(DATA)

# One worker and no job runner (this project runs no MLflow jobs): the UI is up in seconds on two cores.
mlflow-ui: setup ## Open the MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (store in $(MLFLOW_DIR)/)
	@test -f $(MLFLOW_DIR)/mlflow.db || { echo "no MLflow store in $(MLFLOW_DIR)/: run make train first" >&2; exit 1; }
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(RUN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DIR)/mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# The Feast CLI reads feature_repo/feature_store.yaml with its paths rebased onto $(DATA)/.
FEAST_YAML = $(abspath $(DATA))/feast/feature_store.yaml
feast-ui: setup ## Open the Feast UI of $(DATA)/ on http://127.0.0.1:$(FEAST_PORT) (after make train; works offline)
	@test -f $(DATA)/feast/registry.db || { echo "no Feast registry in $(DATA)/feast/: run make train first" >&2; exit 1; }
	@sed 's|\.\./data/|$(abspath $(DATA))/|' feature_repo/feature_store.yaml > $(FEAST_YAML)
	cd feature_repo && ../$(RUN)/feast -f $(FEAST_YAML) ui --host 127.0.0.1 --port $(FEAST_PORT)

# Jupyter prints the URL to open, with a login token (NOTEBOOK_TOKEN= sets it).
notebooks: setup ## Open Jupyter Lab on notebooks/ at http://127.0.0.1:$(NOTEBOOK_PORT), reading $(DATA)/ and $(MLFLOW_DIR)/ (after make train)
	@test -f $(MLFLOW_DIR)/mlflow.db || { echo "no MLflow store in $(MLFLOW_DIR)/: run make train first" >&2; exit 1; }
	INDICATORS_DATA_DIR=$(abspath $(DATA)) INDICATORS_MLFLOW_DIR=$(abspath $(MLFLOW_DIR)) $(RUN)/jupyter lab --no-browser \
		--ServerApp.ip=127.0.0.1 --ServerApp.port=$(NOTEBOOK_PORT) --ServerApp.root_dir=notebooks \
		$(if $(NOTEBOOK_TOKEN),--IdentityProvider.token=$(NOTEBOOK_TOKEN)) $(if $(filter 0,$(shell id -u)),--allow-root)

clean: ## Remove generated data and local MLflow store (keeps .venv)
	rm -rf $(DATA) mlflow/mlflow.db mlflow/artifacts mlflow/reports
