# spotify-engine: `make demo` (set up + run the whole chain) and `make test` (tests + a tiny
# `dagster asset materialize` of the whole chain). Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_CONFIGS := spotify_engine_assets/configs/run
DATA_LAKE ?= $(or $(SPOTIFY_ENGINE_DATA_LAKE),$(CURDIR)/data_lake)
SMOKE_LAKE := $(CURDIR)/build/smoke_lake
# Dagster's CLI warns that its own commands are superseded by the `dg` CLI (not part of dagster 1.13's
# install) and about a beta parameter it passes itself to AssetSelection.groups: nothing of ours, so hidden
# by message, one by one.
DAGSTER_CLI_WARNINGS := ignore:Function `asset_materialize_command` is superseded,ignore:Function `definitions_validate_command` is superseded,ignore:Parameter `include_sources` of function `AssetSelection.groups` is currently in beta
DAGSTER := PYTHONWARNINGS='$(DAGSTER_CLI_WARNINGS)' $(BIN)/dagster asset materialize -m spotify_engine_assets.definitions
# pytest workers (pytest-xdist; a test module stays on one worker, so its module fixtures are built once)
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope

export DAGSTER_HOME ?= $(DATA_LAKE)/dagster_home

.PHONY: install demo test test-fast pytest lint format validate smoke ui bench clean scale-demo

# pip's own lines (a line per package it collects, then what it installs), without the "Requirement already
# satisfied" lines, a local index's "is ignored" notes and setuptools' editable-install banner; pipefail keeps
# pip's exit status
PIP_FILTERED = PYTHONWARNINGS="ignore:Editable installation" bash -o pipefail -c \
	"$(1) 2>&1 | { grep -v -e 'is ignored: it is neither' -e '^Requirement already satisfied' || true; }"
$(STAMP): pyproject.toml
	@echo "install [1/3] $(VENV): virtual environment and pip"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(call PIP_FILTERED,$(BIN)/python -m pip install --quiet --upgrade pip)
	@echo "install [2/3] the project, torch (CPU), Dagster, PyG and the rest: about 3 min and 2 GB on a fresh machine"
	@$(call PIP_FILTERED,$(BIN)/python -m pip install --progress-bar off -e '.[test]')
	@echo "install [3/3] checking the imports"
	@$(BIN)/python -c "import spotify_engine_assets, torch, dagster, torch_geometric"
	@touch $(STAMP)
	@echo "install: done ($$(du -sh $(VENV) | cut -f1) in $(VENV))"

install: $(STAMP)

## make demo: materialize the whole default chain on generated data, print per-asset times and the metric table
demo: $(STAMP)
	SPOTIFY_ENGINE_DATA_LAKE=$(DATA_LAKE) $(BIN)/spotify-engine demo

## make test: lint and format check, definitions validation, unit + integration + browser tests on
## $(PYTEST_WORKERS) workers, then the whole chain through `dagster asset materialize` on tiny data
test: lint validate pytest smoke

pytest: $(STAMP)
	$(PYTEST)

## make test-fast: the unit tests only (pytest -m unit), under a minute
test-fast: $(STAMP)
	$(PYTEST) -m unit

## make lint: ruff's checks and its format check (config in pyproject.toml); make format rewrites the code
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## make validate: `dagster definitions validate` of the code location (in a temporary Dagster home)
validate: $(STAMP)
	@home=$$(mktemp -d) && cp spotify_engine_assets/configs/dagster.yaml $$home/ && \
	DAGSTER_HOME=$$home PYTHONWARNINGS='$(DAGSTER_CLI_WARNINGS)' $(BIN)/dagster definitions validate \
		-m spotify_engine_assets.definitions; status=$$?; rm -rf $$home; exit $$status

smoke: $(STAMP)
	rm -rf $(SMOKE_LAKE) && mkdir -p $(SMOKE_LAKE)/dagster_home
	cp spotify_engine_assets/configs/dagster.yaml $(SMOKE_LAKE)/dagster_home/
	export SPOTIFY_ENGINE_DATA_LAKE=$(SMOKE_LAKE) DAGSTER_HOME=$(SMOKE_LAKE)/dagster_home && \
	$(DAGSTER) --select 'group:listening_ingest or group:listening_sql or group:listening_graph' \
		-c $(RUN_CONFIGS)/in_process.yaml -c $(RUN_CONFIGS)/tiny_data.yaml && \
	$(DAGSTER) --select listening/model_registry -c $(RUN_CONFIGS)/in_process.yaml && \
	for config in $$($(BIN)/python -c "from spotify_engine_assets.datasets.listening import DATASET; print(*sorted(DATASET.registry.full()))"); do \
		$(DAGSTER) --select 'listening/trained_model,listening/metric_report' --partition $$config \
			-c $(RUN_CONFIGS)/in_process.yaml -c $(RUN_CONFIGS)/tiny_train.yaml || exit 1; \
	done && \
	$(DAGSTER) --select listening/model_comparison -c $(RUN_CONFIGS)/in_process.yaml
	@echo "smoke: whole chain materialized; comparison:" && cat $(SMOKE_LAKE)/reports/listening/model_comparison.md

## make ui: the Dagster UI on http://127.0.0.1:3000 with the project's home
ui: $(STAMP)
	$(BIN)/spotify-engine home >/dev/null
	SPOTIFY_ENGINE_DATA_LAKE=$(DATA_LAKE) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## make bench: the spine's figures (generator time, demo chain time per asset, metric table)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generator.py
	$(BIN)/python benchmarks/bench_spine.py

clean:
	rm -rf build $(VENV)

## make scale-demo: PostgreSQL + gRPC code server + dagster-daemon, a backfill of every listening
## config as concurrent runs, then every service stopped (SCALE_PROFILE=default for the default world)
SCALE_DIR ?= $(CURDIR)/build/scale
SCALE_PROFILE ?= tiny
SCALE_RUNS ?= 2
scale-demo: $(STAMP)
	@trap '$(BIN)/python -m spotify_engine_assets.scale stop --dir $(SCALE_DIR) >/dev/null' EXIT INT TERM; \
	$(BIN)/python -m spotify_engine_assets.scale demo --dir $(SCALE_DIR) --profile $(SCALE_PROFILE) \
		--max-concurrent-runs $(SCALE_RUNS) $(if $(SCALE_CONFIGS),--configs $(SCALE_CONFIGS))

## make scale-study: one Optuna study of the listening chain on a throwaway PostgreSQL, run by 2
## worker processes; one is SIGKILLed mid-trial and restarted (STUDY_TRIALS per worker)
STUDY_TRIALS ?= 3
.PHONY: scale-study
scale-study: $(STAMP)
	$(BIN)/python -m spotify_engine_assets.scale study --workers 2 --trials $(STUDY_TRIALS) --dir $(CURDIR)/build/scale-study

## make scale-celery: redis-server + 2 dagster-celery workers (installs the `scale` extra): the
## listening data stage and CELERY_CONFIGS' model stage as runs whose steps run on the workers,
## then a worker process SIGKILLed mid-step (CELERY_KILL) and the run re-run, then a whole worker
## SIGKILLed mid-step (CELERY_KILL_WORKER: its step redelivered to the other one); everything stopped
CELERY_DIR ?= $(CURDIR)/build/scale-celery
CELERY_CONFIGS ?= gat_basic,lightgcn
CELERY_KILL ?= gat_enhanced
CELERY_KILL_WORKER ?= gat_basic
.PHONY: scale-celery
scale-celery: $(STAMP)
	$(BIN)/python -c "import dagster_celery, redis" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[scale]'
	@trap '$(BIN)/python -m spotify_engine_assets.scale stop --dir $(CELERY_DIR) >/dev/null' EXIT INT TERM; \
	$(BIN)/python -m spotify_engine_assets.scale celery --dir $(CELERY_DIR) --configs $(CELERY_CONFIGS) \
		$(if $(CELERY_KILL),--kill $(CELERY_KILL)) $(if $(CELERY_KILL_WORKER),--kill-worker $(CELERY_KILL_WORKER))
