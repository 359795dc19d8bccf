"""Kill at each stage: a materialization SIGKILLed mid-way leaves the previous one intact.

For each stage (generation, SQL, graph, training, study) the stage is first materialized in this
process against a real ``$DAGSTER_HOME`` (SQLite run storage and the ``duckdb_warehouse`` pool),
then started again in a child process on the same data lake and home, and killed with SIGKILL
once it is provably inside the step:

* generation and graph: ``SPOTIFY_ENGINE_TEST_PAUSE=publish:<asset key path>=<marker>`` (read only by
  :func:`spotify_engine_assets.core.storage.artifacts.pause_point`, never set outside tests) holds the
  child after the new artifact is fully written to its temporary folder, before the rename;
* SQL: the same hook holds the child inside the transaction rebuilding ``marts.users``, before
  its COMMIT;
* training: the child's first resumable checkpoint appears (training is under way);
* study: the child's first trial appears in the Optuna storage.

Then: the previous artifact is still current and loads, no half-written version is visible, the
warehouse opens and every table has its previous row count, the killed run is released
(``release_killed_runs``: marked failed, its pool slot freed) and a re-run succeeds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from conftest import lake_env
from killing import sigkill_when

from spotify_engine_assets.core.storage.artifacts import PAUSE_ENV, ArtifactStore, load_torch
from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV, REPO_ROOT
from spotify_engine_assets.core.training.trainer import CHECKPOINT_FILE
from spotify_engine_assets.defs.resources import init_warehouse_pool, release_killed_runs
from spotify_engine_assets.runner import dagster_home, run_config

TESTS = Path(__file__).parent
PARTITION = "lightgcn"
TRAIN_CONFIG = {"ops": {"listening__trained_model": {"config": {"max_epochs": 2}}}}
STUDY_CONFIG = {"ops": {"listening__hpo_study": {"config": {"n_trials": 1, "max_epochs": 2}}}}

# stage -> (selection, base run-config files, partition, artifact key or None)
STAGES = {
    "generation": (dg.AssetSelection.groups("listening_ingest"), ("tiny_data.yaml",), None, ("raw", "synthetic")),
    "sql": (dg.AssetSelection.groups("listening_sql"), (), None, None),
    "graph": (dg.AssetSelection.groups("listening_graph"), (), None, ("listening", "graph")),
    "training": (
        dg.AssetSelection.assets(["listening", "trained_model"]),
        (),
        PARTITION,
        ("listening", "trained_model"),
    ),
    "study": (dg.AssetSelection.assets(["listening", "hpo_study"]), (), PARTITION, ("listening", "hpo_study")),
}
# what the killed child runs (longer than the first materialization, so the kill lands mid-way)
KILLED_CONFIG = {
    "training": {"ops": {"listening__trained_model": {"config": {"max_epochs": 40, "checkpoint_every": 1}}}},
    "study": {"ops": {"listening__hpo_study": {"config": {"n_trials": 4, "max_epochs": 2}}}},
}
# the killed SQL run (and its re-run) rebuilds one model: the kill lands inside its transaction
KILLED_SELECTION = {"sql": dg.AssetSelection.assets(["marts", "users"])}
PAUSE_POINTS = {"generation": "publish:raw/synthetic", "sql": "commit:marts.users", "graph": "publish:listening/graph"}


def _merge(base: dict, extra: dict) -> dict:
    merged = {key: dict(value) for key, value in base.items()}
    for key, value in extra.items():
        merged.setdefault(key, {}).update(value)
    return merged


def stage_config(stage: str, killed: bool = False) -> dict:
    _, files, _, _ = STAGES[stage]
    config = run_config(*files)
    config = _merge(config, TRAIN_CONFIG if stage == "training" else STUDY_CONFIG if stage == "study" else {})
    return _merge(config, KILLED_CONFIG.get(stage, {})) if killed else config


def run_stage(instance: dg.DagsterInstance, stage: str, killed: bool = False) -> dg.ExecuteInProcessResult:
    """Materialize one stage in this process (the child calls this too)."""
    from spotify_engine_assets.definitions import defs

    selection, _, partition, _ = STAGES[stage]
    if killed:
        selection = KILLED_SELECTION.get(stage, selection)
    if stage == "training":
        from spotify_engine_assets.defs import listening
        from spotify_engine_assets.defs.chain import register_configs

        register_configs(listening.CHAIN, instance, Path(os.environ[DATA_LAKE_ENV]))
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        run_config=stage_config(stage, killed),
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        raise_on_error=False,
    )


CHILD = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import dagster as dg
from test_reliability_kill import run_stage
result = run_stage(dg.DagsterInstance.get(), sys.argv[1], killed=True)
sys.exit(0 if result.success else 1)
"""


def _failure(result) -> str:
    return " | ".join(f"{e.message}" for e in result.all_events if e.is_failure)


@contextlib.contextmanager
def real_home(root: Path) -> Iterator[tuple[Path, dg.DagsterInstance]]:
    """``$SPOTIFY_ENGINE_DATA_LAKE`` = ``root/lake`` and a real ``$DAGSTER_HOME`` = ``root/home``
    (the project's dagster.yaml: SQLite storage, the warehouse pool) for the block; yields the
    lake and the home's instance, its storage created before any child process starts."""
    with lake_env(root / "lake", root / "home"):
        dagster_home()
        instance = dg.DagsterInstance.get()
        assert init_warehouse_pool(instance) == 1
        yield root / "lake", instance


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data lake and a real DAGSTER_HOME with every stage materialized once."""
    with real_home(tmp_path_factory.mktemp("kill")) as (lake, instance):
        for stage in STAGES:
            result = run_stage(instance, stage)
            assert result.success, f"{stage}: {_failure(result)}"
        yield lake, instance


def _warehouse_counts(lake: Path) -> dict[str, int]:
    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        tables = con.sql("SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0] for s, t in tables}


def _load_current(store: ArtifactStore, key: tuple[str, ...], partition: str | None) -> Path:
    folder = store.current(key, partition)
    for parquet in folder.glob("*.parquet"):
        assert pl.read_parquet(parquet).height >= 0
    if (folder / "data.pt").exists():
        assert load_torch(folder / "data.pt")
    assert any(folder.iterdir())
    return folder


def _sign(stage: str, lake: Path, marker: Path, study_trials: int):
    """A function telling whether the child is inside the step."""
    if stage in PAUSE_POINTS:
        return marker.exists
    if stage == "training":
        # the published checkpoint file (not its temporary file): the killed run got that far
        return lambda: any((lake / "checkpoints" / "listening" / PARTITION).glob(f"*/{CHECKPOINT_FILE}"))

    def new_trial() -> bool:
        return _trial_count(lake) > study_trials

    return new_trial


def _trial_count(lake: Path) -> int:
    path = lake / "optuna" / "studies.db"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
        try:
            return con.execute("SELECT count(*) FROM trials").fetchone()[0]
        except sqlite3.OperationalError:  # being created
            return 0


@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_stage_keeps_previous_materialization_and_reruns(home, stage, tmp_path):
    lake, instance = home
    _, _, partition, key = STAGES[stage]
    store = ArtifactStore(lake / "artifacts")
    before_current = store.current(key, partition) if key else None
    before_versions = store.versions(key, partition) if key else []
    before_tables = _warehouse_counts(lake)
    marker = tmp_path / "inside.marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if stage in PAUSE_POINTS:
        env[PAUSE_ENV] = f"{PAUSE_POINTS[stage]}={marker}"
    inside = _sign(stage, lake, marker, _trial_count(lake))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, stage], env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    sigkill_when(child, inside, 240, f"{stage} step")

    # the previous materialization is intact, current and loadable; nothing half-written shows
    if key:
        assert store.current(key, partition) == before_current
        assert store.versions(key, partition) == before_versions
        _load_current(store, key, partition)
    assert _warehouse_counts(lake) == before_tables

    # the killed run is released (failed, pool slot freed), then a re-run succeeds
    killed = release_killed_runs(instance)
    assert len(killed) == 1 and instance.get_run_by_id(killed[0]).status == dg.DagsterRunStatus.FAILURE
    assert release_killed_runs(instance) == []
    again = run_stage(instance, stage, killed=True)
    assert again.success, f"{stage}: {_failure(again)}"
    if key:
        assert store.current(key, partition) != before_current
        _load_current(store, key, partition)
    if stage == "training":
        materialization = again.asset_materializations_for_node("listening__trained_model")[0]
        assert materialization.metadata["resumed_from_epoch"].value >= 1  # resumed the killed run's checkpoint
    assert set(_warehouse_counts(lake)) == set(before_tables)
