"""The project's Dagster instance (``defs/instance.py``) under a killed pool holder and a read-only home.

Issue 19: after a SIGKILLed ``dagster asset materialize`` the next writer waited for ever on the
``duckdb_warehouse`` pool (logged only at DEBUG) and ignored SIGTERM and SIGINT; a read-only
``$DAGSTER_HOME`` mid-run crashed with SQLAlchemy's traceback. Every run here is a real process on a
real home (the project's dagster.yaml), started with the Dagster CLI where the issue's was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from killing import sigkill_when
from test_reliability_kill import real_home

from spotify_engine_assets.core.storage.paths import REPO_ROOT
from spotify_engine_assets.defs.instance import DagsterHomeError
from spotify_engine_assets.defs.resources import DUCKDB_POOL, release_killed_runs

# a definitions file: "holder" takes the warehouse pool's slot, writes its run id to $MARKER and
# sleeps; "writer" needs the same slot and ends at once
POOL_DEFS = f"""
import os, time
from pathlib import Path
import dagster as dg

@dg.asset(pool={DUCKDB_POOL!r})
def holder(context) -> None:
    Path(os.environ["MARKER"]).write_text(context.run_id)
    time.sleep(float(os.environ.get("HOLD_S", "600")))

@dg.asset(pool={DUCKDB_POOL!r})
def writer() -> None:
    pass

defs = dg.Definitions(assets=[holder, writer], executor=dg.in_process_executor)
"""


def _dagster(defs: Path, asset: str, **env: str) -> subprocess.Popen:
    """``dagster asset materialize -f <defs> --select <asset>`` in the background (stderr piped)."""
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-f", str(defs), "--select", asset]
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)
    return found


@pytest.fixture
def pool_home(tmp_path) -> Iterator[tuple[Path, dg.DagsterInstance, Path]]:
    with real_home(tmp_path) as (_, instance):
        defs = tmp_path / "pool_defs.py"
        defs.write_text(POOL_DEFS)
        yield tmp_path, instance, defs


def _holder_run_id(marker: Path) -> str | None:
    return (marker.exists() and marker.read_text()) or None


def test_a_killed_holders_slot_is_freed_for_the_next_cli_writer(pool_home):
    root, instance, defs = pool_home
    marker = root / "holding"
    holder = _dagster(defs, "holder", MARKER=str(marker))
    holder_run = sigkill_when(holder, lambda: _holder_run_id(marker), 240, "holder step")
    assert instance.get_run_by_id(holder_run).status == dg.DagsterRunStatus.STARTED
    assert [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).claimed_slots] == [
        holder_run
    ]

    writer = _dagster(defs, "writer")
    _, stderr = writer.communicate(timeout=240)  # waited for ever before
    assert writer.returncode == 0, stderr[-3000:]
    assert f"freed the slots of run(s) {holder_run}, whose processes are gone" in stderr
    assert instance.get_run_by_id(holder_run).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).claimed_slots == []
    assert release_killed_runs(instance) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_waiting_writer_logs_the_holder_at_info_and_stops_on_a_signal(pool_home, signum):
    root, instance, defs = pool_home
    marker = root / "holding"
    holder = _dagster(defs, "holder", MARKER=str(marker))
    try:
        holder_run = _wait_for(lambda: _holder_run_id(marker), 240, "holder step")
        writer = _dagster(defs, "writer")

        def waiting_logged():
            runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            return next(
                (
                    entry
                    for run in runs
                    if run.run_id != holder_run
                    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                    if "waits for a slot" in entry.message
                ),
                None,
            )

        entry = _wait_for(waiting_logged, 240, "the writer's wait")
        assert entry.level == 20 and f"held by run(s) {holder_run}" in entry.message  # INFO, naming the holder
        writer.send_signal(signum)
        _, stderr = writer.communicate(timeout=30)  # ignored both signals before
        assert writer.returncode != 0
        assert instance.get_run_by_id(entry.run_id).status == dg.DagsterRunStatus.FAILURE
        assert f"held by run(s) {holder_run}" in stderr
        info = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL)
        assert [slot.run_id for slot in info.claimed_slots] == [holder_run]
        assert {step.run_id for step in info.pending_steps} == {holder_run}  # the writer's claim withdrawn
    finally:
        holder.kill()
        holder.communicate()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` and everything in it unwritable for the block (root ignores mode bits: the
    immutable flag then, skipping where ``chattr`` is refused)."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "-R", "+i", str(folder)], check=False).returncode:
            pytest.skip("cannot make a folder read-only for root here (chattr +i refused)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        return
    modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_a_read_only_home_fails_at_start_naming_the_folder(tmp_path):
    with real_home(tmp_path):
        home = Path(os.environ["DAGSTER_HOME"])
        with read_only(home), pytest.raises(DagsterHomeError, match=f"Dagster home {home} is not writable"):
            dg.DagsterInstance.from_config(str(home))


def test_a_home_turned_read_only_mid_run_fails_naming_the_folder(pool_home):
    root, instance, defs = pool_home
    marker, home = root / "holding", Path(os.environ["DAGSTER_HOME"])
    run = _dagster(defs, "holder", MARKER=str(marker), HOLD_S="3")
    run_id = _wait_for(lambda: _holder_run_id(marker), 240, "holder step")
    with read_only(home):
        _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert f"DagsterHomeError: Dagster home {home} is not writable" in last, stderr[-3000:]
    assert "sqlalchemy.exc" not in stderr
    # writable again: the run, left STARTED (nothing could be recorded), is found dead and released
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert release_killed_runs(instance) == [run_id]
    assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).claimed_slots == []


OLD_DAGSTER_YAML = """# Dagster instance settings for the project's home (copied to $DAGSTER_HOME/dagster.yaml).
# Run history, event logs and schedules in SQLite files under $DAGSTER_HOME.
storage:
  sqlite:
    base_dir:
      env: DAGSTER_HOME
telemetry:
  enabled: false
concurrency:
  pools:
    # Only DuckDB writers join a pool ("duckdb_warehouse"): one at a time across all runs,
    # because DuckDB allows a single writer per file.
    default_limit: 1
"""


def test_a_home_with_the_previously_shipped_settings_gets_the_guarded_storage(tmp_path, monkeypatch):
    """A home an earlier version created would miss the guards: its unedited dagster.yaml is
    replaced, an edited one kept."""
    from spotify_engine_assets.core.storage.paths import configs_dir
    from spotify_engine_assets.runner import dagster_home

    current = (configs_dir() / "dagster.yaml").read_text()
    for name, text, expected in (("old", OLD_DAGSTER_YAML, current), ("edited", OLD_DAGSTER_YAML + "# mine\n", None)):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(text)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        dagster_home()
        assert (home / "dagster.yaml").read_text() == (expected or text)
    assert "ProjectSqliteStorage" in current
