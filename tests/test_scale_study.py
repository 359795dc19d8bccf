"""One Optuna study of the listening chain on a real PostgreSQL server, run by two worker processes
at once (spotify_engine_assets/scale/study.py): distinct trials in one study, and a worker killed
mid-run (SIGKILL) whose RUNNING trial the heartbeat fails and whose restart resumes the study.
The storage URL never carries the password (``$SPOTIFY_ENGINE_PG_PASSWORD``).

Skipped when the PostgreSQL binaries are missing or the server cannot start. ~30 s on 2 busy
cores; ``SPOTIFY_ENGINE_SCALE_TESTS=0`` leaves the two-worker test out.
"""

import os

import optuna
import pytest

pytest.importorskip("psycopg2")

from test_scale_postgres import server  # noqa: F401 - the fixture: a throwaway PostgreSQL server

from spotify_engine_assets.core.experiments import hpo
from spotify_engine_assets.scale import profile as prof
from spotify_engine_assets.scale.study import format_report, postgres_url, run_shared_study

SCALE_TESTS = os.environ.get("SPOTIFY_ENGINE_SCALE_TESTS", "1") != "0"


@pytest.fixture
def pg(server, monkeypatch):
    """test_scale_postgres's server (skipped when PostgreSQL cannot start) with the study database
    and its password in $SPOTIFY_ENGINE_PG_PASSWORD only."""
    server.create_database(prof.OPTUNA_DB)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("SPOTIFY_ENGINE_PG_PASSWORD", server.password)
    return server


def test_storage_url_without_password_and_clear_errors(pg, monkeypatch):
    server = pg
    url = postgres_url(server, prof.OPTUNA_DB)
    assert server.password not in url
    storage = hpo.open_storage(url)  # the password from $SPOTIFY_ENGINE_PG_PASSWORD
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert optuna.get_all_study_names(storage) == []

    where = f"host=127.0.0.1 port={server.port} db=optuna user={server.user}"
    monkeypatch.setenv("SPOTIFY_ENGINE_PG_PASSWORD", "not-the-password")
    with pytest.raises(hpo.HpoError, match="rejected the credentials") as error:
        hpo.open_storage(url)
    assert where in str(error.value) and "not-the-password" not in str(error.value)
    assert "from $SPOTIFY_ENGINE_PG_PASSWORD" in str(error.value)

    monkeypatch.delenv("SPOTIFY_ENGINE_PG_PASSWORD")
    monkeypatch.setenv("PGPASSWORD", server.password)  # libpq's own variable works too
    assert isinstance(hpo.open_storage(url), optuna.storages.RDBStorage)
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(hpo.HpoError, match="password=\\*\\*\\* from none"):
        hpo.open_storage(url)

    monkeypatch.setenv("SPOTIFY_ENGINE_PG_PASSWORD", server.password)
    server.stop()
    with pytest.raises(hpo.HpoError, match="not reachable") as error:
        hpo.open_storage(url)
    assert where in str(error.value) and server.password not in str(error.value)


@pytest.mark.skipif(not SCALE_TESTS, reason="SPOTIFY_ENGINE_SCALE_TESTS=0")
def test_two_workers_one_study_and_a_killed_worker_resumes(pg, tmp_path):
    server = pg
    url = postgres_url(server, prof.OPTUNA_DB)
    report = run_shared_study(
        tmp_path / "study", workers=2, trials=3, max_epochs=2, url=url, timeout=300, log=lambda message: None
    )
    text = format_report(report)
    assert report.ok, text
    rows = report.trials
    # one study: every trial once, numbered 0..n-1, each drawing its own point
    assert sorted(row["number"] for row in rows) == list(range(len(rows)))
    drawn = [tuple(sorted(row["params"].items())) for row in rows]
    assert len(set(drawn)) == len(drawn)
    assert sum(row["enqueued"] for row in rows) == 1 and next(r for r in rows if r["enqueued"])["worker"] == 0
    # both workers ran trials; worker 1 was killed during a trial, which the heartbeat failed
    killed = report.killed
    assert killed["worker"] == 1
    states = {row["number"]: row["state"] for row in rows}
    assert states[killed["trial"]] == "FAIL" and list(states.values()).count("FAIL") == 1
    assert "RUNNING" not in states.values() and "WAITING" not in states.values()
    # resumed: the killed session finished trials before the kill, the restarted one after it
    before = [r["number"] for r in rows if r["pid"] == killed["pid"] and r["state"] != "FAIL"]
    after = [r["number"] for r in rows if r["pid"] == report.restarted_pid]
    assert before and after and max(before) < killed["trial"] < min(after)
    assert sum(r["worker"] == 1 and r["state"] != "FAIL" for r in rows) == 3
    assert sum(r["worker"] == 0 for r in rows) == 3
    # the password is in no URL, log or report
    assert server.password not in report.url and server.password not in text
    for log in (tmp_path / "study").glob("*.log"):
        assert server.password not in log.read_text()
    study = optuna.load_study(study_name=report.study_name, storage=hpo.open_storage(url))
    assert len(study.trials) == len(rows) and study.best_value == report.best[1]
