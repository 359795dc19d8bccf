# spotify-engine: `make demo` (set up + run the whole chain) and `make test` (tests + a tiny
# `dagster asset materialize` of the whole chain). Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_CONFIGS := spotify_engine_assets/configs/run
DATA_LAKE ?= $(or $(SPOTIFY_ENGINE_DATA_LAKE),$(CURDIR)/data_lake)
SMOKE_LAKE := $(CURDIR)/build/smoke_lake
DAGSTER := $(BIN)/dagster asset materialize -m spotify_engine_assets.definitions

export DAGSTER_HOME ?= $(DATA_LAKE)/dagster_home

.PHONY: install demo test pytest smoke ui bench clean scale-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import spotify_engine_assets, torch, dagster, torch_geometric"
	touch $(STAMP)

install: $(STAMP)

## make demo: materialize the whole default chain on generated data, print per-asset times and the metric table
demo: $(STAMP)
	SPOTIFY_ENGINE_DATA_LAKE=$(DATA_LAKE) $(BIN)/spotify-engine demo

## make test: unit + integration tests, then the whole chain through `dagster asset materialize` on tiny data
test: pytest smoke

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

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
## then a worker process SIGKILLed mid-step (CELERY_KILL) and the run re-run; everything stopped
CELERY_DIR ?= $(CURDIR)/build/scale-celery
CELERY_CONFIGS ?= gat_basic,lightgcn
CELERY_KILL ?= gat_enhanced
.PHONY: scale-celery
scale-celery: $(STAMP)
	$(BIN)/python -c "import dagster_celery, redis" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[scale]'
	@trap '$(BIN)/python -m spotify_engine_assets.scale stop --dir $(CELERY_DIR) >/dev/null' EXIT INT TERM; \
	$(BIN)/python -m spotify_engine_assets.scale celery --dir $(CELERY_DIR) --configs $(CELERY_CONFIGS) \
		$(if $(CELERY_KILL),--kill $(CELERY_KILL))
