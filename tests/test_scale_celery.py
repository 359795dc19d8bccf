"""Steps on Celery workers (spotify_engine_assets/scale/celery_run.py): ``dagster-celery`` with a
Redis broker (``redis-server``) and two workers sharing the scale profile's PostgreSQL instance.

Skipped when redis-server, dagster-celery (``pip install -e '.[scale]'``) or PostgreSQL is missing.
The services test (redis + 2 workers up, answering, all stopped) takes ~15 s and runs with the
suite. The end-to-end test (data stage as one run of 18 steps on the workers, the model stage of 2
configs, a worker's pool process SIGKILLed mid-step and the re-run, then a whole worker SIGKILLed
mid-step, its step redelivered to the other worker after the 60 s visibility timeout, and the
re-run) took 522 s on 2 cores under a load average of 7 (106 s before the whole-worker fault, on a
lighter load), so it is opt-in: ``SPOTIFY_ENGINE_CELERY_TESTS=1``.
"""

import os
import shutil

import pytest

pytest.importorskip("dagster_celery", reason="dagster-celery not installed: pip install -e '.[scale]'")
pytest.importorskip("redis", reason="redis (client) not installed: pip install -e '.[scale]'")
if not shutil.which("redis-server"):
    pytest.skip("redis-server not installed (apt-get install redis-server)", allow_module_level=True)

from spotify_engine_assets.scale import celery_run
from spotify_engine_assets.scale.postgres import PostgresUnavailable, pg_bin

CELERY_TESTS = os.environ.get("SPOTIFY_ENGINE_CELERY_TESTS") == "1"


@pytest.fixture
def postgres_ok():
    try:
        pg_bin("initdb"), pg_bin("pg_ctl")
    except (PostgresUnavailable, OSError) as error:
        pytest.skip(f"PostgreSQL binaries missing: {error}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_executor_config_and_definitions():
    config = celery_run.executor_config(6399)["execution"]["config"]
    assert config["broker"] == "redis://127.0.0.1:6399/0" and config["backend"] == "redis://127.0.0.1:6399/1"
    # a lost worker's task is acknowledged late, so Redis hands it to another worker after the visibility timeout
    source = config["config_source"]
    assert source["task_acks_late"] is True and "task_reject_on_worker_lost" not in source
    assert source["broker_transport_options"]["visibility_timeout"] == celery_run.VISIBILITY_TIMEOUT_S
    assert (
        celery_run.executor_config(6399, 300)["execution"]["config"]["config_source"]["broker_transport_options"][
            "visibility_timeout"
        ]
        == 300
    )
    from spotify_engine_assets.scale.celery_defs import defs

    assert defs.executor.name == "celery"


def test_services_start_answer_and_stop(tmp_path, postgres_ok, monkeypatch):
    from celery import Celery

    services = celery_run.start_services(tmp_path / "celery", log=lambda _: None)
    try:
        pids = __import__("json").loads((tmp_path / "celery" / "services.json").read_text())
        assert set(pids) == {"redis", *celery_run.WORKERS}
        broker = f"redis://127.0.0.1:{services['redis_port']}/0"
        replies = Celery(broker=broker).control.ping(timeout=10, limit=2)
        names = sorted(name.split("@")[0] for reply in replies for name in reply)
        assert names == sorted(celery_run.WORKERS)
    finally:
        stopped = celery_run.stop_services((tmp_path / "celery").resolve())
    assert any(s.startswith("postgres") for s in stopped)
    assert not any(_alive(pid) for pid in pids.values())


@pytest.mark.skipif(not CELERY_TESTS, reason="~4-9 min: set SPOTIFY_ENGINE_CELERY_TESTS=1 to run")
def test_steps_on_two_workers_kill_and_rerun(tmp_path, postgres_ok):
    profile = tmp_path / "celery"
    summary = celery_run.run_celery_demo(
        profile, ["gat_basic", "lightgcn"], timeout=900, kill="gat_enhanced", kill_worker="gat_basic", log=print
    )
    print(celery_run.format_summary(summary))
    assert summary["data_run"]["status"] == "SUCCESS"
    assert [r["status"] for r in summary["model_runs"]] == ["SUCCESS", "SUCCESS"]
    # every step ran on a worker, and both workers took steps
    runs = [summary["data_run"], *summary["model_runs"]]
    workers = {s["worker"].split("@")[0] for r in runs for s in r["steps"].values()}
    assert workers == set(celery_run.WORKERS)
    assert all(s.get("pid") and s["pid"] != os.getpid() for r in runs for s in r["steps"].values())
    fault = summary["fault"]
    assert fault["failed_run"]["status"] == "FAILURE" and fault["exit_code"] != 0
    assert (
        "WorkerLostError" in fault["failed_run"]["failure"]
        and "listening__trained_model" in fault["failed_run"]["failure"]
    )
    assert fault["rerun"]["status"] == "SUCCESS" and fault["metric_report_materialized"]
    # the whole worker killed (main process, its pool process with it): the unacknowledged task goes to
    # the other worker after the visibility timeout, the step runs again there and the run succeeds
    whole = summary["worker_fault"]
    assert not whole["pool_process_alive"]
    assert whole["run"]["status"] == "SUCCESS" and whole["exit_code"] == 0, whole
    first, *others = whole["step_workers"]
    assert first == whole["killed_worker"] and others and all(w != first for w in others), whole["step_workers"]
    assert whole["seconds_to_redelivery"] >= celery_run.VISIBILITY_TIMEOUT_S - 20  # from the delivery, before the kill
    assert whole["rerun"]["status"] == "SUCCESS" and whole["metric_report_materialized"]
    assert summary["success"]
    assert any(s.startswith("postgres") for s in summary["stopped"]) and len(summary["stopped"]) == 4
    assert not (profile / "services.json").exists()
