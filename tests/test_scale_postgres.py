"""The scale-out profile on a real PostgreSQL server (spotify_engine_assets/scale): the instance
loads on it, bad credentials and a stopped server fail naming the instance and the connection,
and the daemon runs a 2-partition backfill of listening model configs as concurrent runs.

Skipped when the PostgreSQL binaries are missing or the server cannot start. The backfill test
took 100 s on 2 busy cores (the rest ~35 s), so it runs with the suite (``make test``,
``.ci/run``); ``SPOTIFY_ENGINE_SCALE_TESTS=0`` leaves it out.
"""

import os
from pathlib import Path

import pytest

pytest.importorskip("dagster_postgres")
pytest.importorskip("psycopg2")

from spotify_engine_assets.scale import profile as prof
from spotify_engine_assets.scale.demo import max_overlap, run_demo
from spotify_engine_assets.scale.postgres import PostgresServer, PostgresUnavailable, pg_bin

SCALE_TESTS = os.environ.get("SPOTIFY_ENGINE_SCALE_TESTS", "1") != "0"


@pytest.fixture
def server(tmp_path):
    try:
        pg_bin("initdb"), pg_bin("pg_ctl")
        srv = PostgresServer.create(tmp_path / "scale").start()
    except (PostgresUnavailable, OSError) as error:
        pytest.skip(f"PostgreSQL cannot start here: {error}")
    try:
        srv.create_database(prof.DAGSTER_DB)
        yield srv
    finally:
        srv.remove()


@pytest.fixture
def pg_env(server, monkeypatch):
    for var, value in prof.server_env(server).items():
        monkeypatch.setenv(var, value)
    return server


def test_instance_loads_on_postgres(pg_env, tmp_path):
    home = tmp_path / "home"
    text = prof.write_home(home, max_concurrent_runs=3).read_text()
    assert pg_env.password not in text  # credentials only by environment variable
    instance = prof.load_instance(home)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3
    from spotify_engine_assets.defs.resources import DUCKDB_POOL, init_warehouse_pool

    assert init_warehouse_pool(instance) == 1  # the DuckDB writer pool lives in PostgreSQL too
    assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).slot_count == 1


def test_bad_credentials_name_the_instance(pg_env, tmp_path, monkeypatch):
    home = tmp_path / "home"
    prof.write_home(home)
    monkeypatch.setenv(prof.ENV["password"], "not-the-password")
    with pytest.raises(prof.ScaleInstanceError) as error:
        prof.load_instance(home)
    message = str(error.value)
    assert str(home / "dagster.yaml") in message and "storage.postgres.postgres_db" in message
    assert "rejected the credentials" in message
    assert f"port={pg_env.port}" in message and f"user={pg_env.user}" in message and "db=dagster" in message
    assert "not-the-password" not in message and pg_env.password not in message


def test_server_down_names_the_instance(pg_env, tmp_path):
    home = tmp_path / "home"
    prof.write_home(home)
    pg_env.stop()
    with pytest.raises(prof.ScaleInstanceError, match="not reachable") as error:
        prof.load_instance(home)
    assert f"port={pg_env.port}" in str(error.value) and pg_env.password not in str(error.value)


def test_max_overlap():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1
    assert max_overlap([]) == 0


@pytest.mark.skipif(
    not SCALE_TESTS, reason="SPOTIFY_ENGINE_SCALE_TESTS=0: daemon + gRPC server + 2-run backfill (~100 s) left out"
)
def test_daemon_backfill_runs_concurrently(tmp_path, monkeypatch):
    try:
        pg_bin("initdb")
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    for var in (*prof.ENV.values(), "DAGSTER_HOME", "SPOTIFY_ENGINE_DATA_LAKE"):
        monkeypatch.delenv(var, raising=False)  # run_demo sets them; monkeypatch restores them after
    # two graph models (tiny_train: a few seconds of training each) so that execution overlaps
    summary = run_demo(
        tmp_path / "scale", "tiny", max_concurrent_runs=2, configs=["gat_basic", "lightgcn"], timeout=900, log=print
    )
    assert summary["backfill_status"] == "COMPLETED_SUCCESS", summary
    assert summary["run_statuses"] == {"SUCCESS": 2}
    assert summary["materialized_metric_reports"] == ["gat_basic", "lightgcn"]
    assert summary["max_concurrent_runs_launched"] == 2
    assert summary["max_concurrent_runs_seen"] == 2, summary["run_seconds"]
    assert summary["pool"]["slot_count"] == 1 and summary["pool"]["active_slots"] == 0
    assert any(s.startswith("postgres") for s in summary["stopped"])
    assert not Path(tmp_path / "scale" / "services.json").exists()
