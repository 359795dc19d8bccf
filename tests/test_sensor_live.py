"""The landing sensor live: a real ``dagster-daemon`` (sensor daemon, queued run coordinator,
default run launcher, code server) against a temporary ``DAGSTER_HOME`` (the project's
``configs/dagster.yaml``) and a temporary data lake.

The playlist chain is materialized once into that instance, ``landing_sensor`` is turned on
with ``dagster sensor start``, a Kaggle-format file and its ``.done`` marker are dropped into
``landing/``, and the test waits for the daemon to launch the landing run and then one retrain
run per config its retraining settings name, all of which must succeed.

The code location is a small file composing the playlist domain exactly as
``definitions.py`` does (same assets, jobs, sensor and resources; the SQL project limited to its
``playlists`` folder), so unrelated domains neither slow it down nor break it; the full
composition is covered by ``test_definitions.py``.

Opt-in (``SPOTIFY_ENGINE_LIVE_TESTS=1``): on 2 cores it takes about a minute (three retrain configs) - the
daemon and ``dagster sensor start`` each load the code location (~20 s), then every run is a
process of its own importing torch and Dagster (the landing run, then one per model config).
When enabled, it is skipped (with the reason) only when the daemon cannot start here.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from test_sensor import kaggle_csv, playlists_rows

from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV, REPO_ROOT, SQL_DIR_ENV, configs_dir
from spotify_engine_assets.datasets.playlists import DATASET
from spotify_engine_assets.defs.playlists.sensors import INTERVAL_ENV, LANDING_TAG, RETRAIN_ENV

LIVE_ENV = "SPOTIFY_ENGINE_LIVE_TESTS"
pytestmark = pytest.mark.skipif(
    os.environ.get(LIVE_ENV) != "1",
    reason=f"live dagster-daemon test (~1 min on 2 cores, over the suite's per-test budget): set {LIVE_ENV}=1 to run it",
)
BIN = Path(sys.executable).parent
DEADLINE_S = 150
# what the sensor retrains, set as a user would (its retraining settings): a baseline, a closed-form model
# and a graph model; a config whose blocking quality gate fails on this tiny batch would fail its run
RETRAIN_CONFIGS = ("itemknn", "lightgcn_itemknn", "most_popular")
CODE_LOCATION = """
import dagster as dg
from spotify_engine_assets.defs import playlists, sql
from spotify_engine_assets.defs.resources import DataLake, LakeIOManager, TorchRuntime, Warehouse

lake = DataLake()
defs = dg.Definitions.merge(
    sql.build_sql_definitions(sql.load_project()),
    playlists.defs,  # with its landing sensor (defs.playlists.sensors)
    dg.Definitions(resources={
        "lake": lake, "warehouse": Warehouse(lake=lake), "torch_runtime": TorchRuntime(), "io_manager": LakeIOManager(lake=lake),
    }),
)
"""


@pytest.fixture()
def live(tmp_path, monkeypatch):
    home, lake, sql = tmp_path / "home", tmp_path / "lake", tmp_path / "sql"
    home.mkdir()
    shutil.copyfile(configs_dir() / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(REPO_ROOT / "dbt_like_sql" / "playlists", sql / "playlists")
    (tmp_path / "playlist_location.py").write_text(CODE_LOCATION)
    env = {
        "DAGSTER_HOME": str(home),
        DATA_LAKE_ENV: str(lake),
        SQL_DIR_ENV: str(sql),
        INTERVAL_ENV: "2",
        "OMP_NUM_THREADS": "1",
        RETRAIN_ENV["configs"]: ",".join(RETRAIN_CONFIGS),
        RETRAIN_ENV["max_epochs"]: "3",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path)]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield tmp_path, lake, home


def _materialize_chain(tmp_path: Path, lake: Path) -> None:
    """The chain once, in-process, into the DAGSTER_HOME instance (the daemon's)."""
    (lake / "kaggle").mkdir(parents=True)
    (lake / "kaggle" / "spotify_dataset.csv").write_text(kaggle_csv(playlists_rows(10)))
    sys.path.insert(0, str(tmp_path))
    try:
        import playlist_location
    finally:
        sys.path.remove(str(tmp_path))
    from spotify_engine_assets.runner import run_config

    defs = playlist_location.defs
    base = dg.AssetSelection.groups("playlists_ingest", "playlists_sql", "playlists_graph") - dg.AssetSelection.assets(
        ["kaggle_raw", "landed_entries"], ["kaggle_raw", "landed_rejects"]
    )
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=base,
            run_config=run_config(),
            instance=instance,
            resources=defs.resources,
        )
    assert result.success
    sys.modules.pop("playlist_location", None)


def _runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.get() as instance:
        return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "landing_sensor"})))


def _timeline(runs: list[dg.DagsterRun], origin: float) -> str:
    """Each run's status and its create / start / end seconds after ``origin`` (wall clock)."""
    rows = []
    with dg.DagsterInstance.get() as instance:
        for run in runs:
            record = instance.get_run_record_by_id(run.run_id)
            stats = instance.get_run_stats(run.run_id)
            moments = [record.create_timestamp.timestamp(), stats.start_time, stats.end_time]
            cells = " ".join(
                f"{name} {t - origin:.0f}s" if t else f"{name} -"
                for name, t in zip(("created", "started", "ended"), moments)
            )
            rows.append(f"{run.job_name}[{run.tags.get('dagster/partition', '')[:24]}] {run.status.value}: {cells}")
    return "\n".join(sorted(rows))


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def test_daemon_launches_landing_then_retrain_runs(live):
    tmp_path, lake, home = live
    location = ["-f", str(tmp_path / "playlist_location.py"), "-d", str(tmp_path)]
    _materialize_chain(tmp_path, lake)
    started, origin = time.monotonic(), time.time()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as handle:
        try:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", *location],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                start_new_session=True,
            )
        except OSError as error:
            pytest.skip(f"dagster-daemon cannot start here: {error}")
    try:
        start = subprocess.run(
            [str(BIN / "dagster"), "sensor", "start", "landing_sensor", *location],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert start.returncode == 0 and "Started sensor landing_sensor" in start.stdout, start.stdout + start.stderr
        if daemon.poll() is not None:
            pytest.skip(f"dagster-daemon exited at once (code {daemon.returncode}): {_tail(log, 10)}")
        landing = lake / "landing"
        landing.mkdir()
        (landing / "drop.csv").write_text(kaggle_csv(playlists_rows(11, users=6)))
        (landing / "drop.csv.done").write_text("")

        configs = set(RETRAIN_CONFIGS)
        assert configs < set(DATASET.registry.base)
        while True:
            runs = _runs(home)
            data = [r for r in runs if r.tags.get("spotify_engine/stage") == "data"]
            models = [r for r in runs if r.tags.get("spotify_engine/stage") == "model"]
            failed = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
            assert not failed, f"runs failed:\n{_timeline(runs, origin)}\n{_tail(log)}"
            done = {r.tags.get("dagster/partition") for r in models if r.status == dg.DagsterRunStatus.SUCCESS}
            if data and all(r.status == dg.DagsterRunStatus.SUCCESS for r in data) and done == configs:
                break
            assert daemon.poll() is None, f"dagster-daemon died:\n{_tail(log)}"
            assert time.monotonic() - started < DEADLINE_S, (
                f"not done after {DEADLINE_S}s:\n{_timeline(runs, origin)}\n{_tail(log, 15)}"
            )
            time.sleep(1)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)

    (data_run,) = data
    batch = data_run.tags[LANDING_TAG]
    assert data_run.job_name == "playlist_landing_job" and data_run.tags["dagster/partition"] == batch
    assert (lake / "landing" / "archive" / batch / "drop.csv").exists() and not (lake / "landing" / "drop.csv").exists()
    assert not (lake / "landing" / "archive" / "duplicates").exists()
    assert {r.job_name for r in models} == {"playlist_retrain_job"} and len(models) == len(configs)
    assert all(r.tags[LANDING_TAG] == batch for r in models)
    # the settings reached every retrain run's config
    assert all(r.run_config["ops"]["playlists__trained_model"]["config"]["max_epochs"] == 3 for r in models), [
        r.run_config for r in models
    ]
    assert (lake / "reports" / "playlists" / "model_comparison.md").exists()
    with dg.DagsterInstance.get() as instance:
        assert batch in instance.get_dynamic_partitions("landing_batches")
        graph = instance.get_latest_materialization_event(dg.AssetKey(["playlists", "graph"]))
        assert graph.run_id == data_run.run_id  # the landing run rebuilt the graph
    print(
        f"\nlive: landing + {len(models)} retrain runs succeeded {time.monotonic() - started:.0f}s after the daemon started"
    )
    print(_timeline(runs, origin))
