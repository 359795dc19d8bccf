"""The project's Dagster instance storage: Dagster's SQLite files under ``$DAGSTER_HOME`` (the same
layout as ``storage: sqlite``), with two guards. ``configs/dagster.yaml`` selects it::

    storage:
      custom:
        module: spotify_engine_assets.defs.instance
        class: ProjectSqliteStorage
        config: {base_dir: {env: DAGSTER_HOME}}

* **A dead run's pool slot is freed.** A run SIGKILLed while it held a ``duckdb_warehouse`` slot
  never frees it, and every later writer would wait for ever. When a step's claim finds its pool
  full, each holder run is judged: a run whose every process (the pids of its RUN_START and
  STEP_START events; a SQLite instance serves one host, so they are checked here) is gone is
  marked failed and its slots freed (:func:`free_dead_holders`), however it was started (the
  ``spotify-engine`` CLI, ``dagster asset materialize``, the UI). The wait is logged at INFO
  naming the holder runs, every :data:`WAIT_LOG_INTERVAL_S`, and a waiting process stops on
  SIGINT/SIGTERM (Dagster's in-process executor polls for a slot without looking at the interrupt
  it captured, so it ignored both) and sleeps between its claims (that executor spun on a core).
* **A read-only home is named.** The home must be writable: checked when the instance is created,
  and a run event that cannot be written mid-run raises :class:`DagsterHomeError` naming the
  folder instead of SQLAlchemy's traceback (the run then stays STARTED, as nothing can be
  recorded; the next writer's check marks it failed once the home is writable again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEventType
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import (
    SqliteScheduleStorage,
)
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._utils.interrupts import check_captured_interrupt

if TYPE_CHECKING:
    import dagster as dg
    from dagster._utils.concurrency import ConcurrencyClaimStatus
    from sqlalchemy.engine import Connection

WAIT_LOG_INTERVAL_S = 60.0
CLAIM_POLL_S = 0.5  # seconds between a waiting step's claims
_PROCESS_EVENTS = {DagsterEventType.RUN_START, DagsterEventType.STEP_START}
_LIVE_STATUSES = (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING)


def _console() -> logging.Logger:
    """An INFO logger writing to stderr, as Dagster's console logger does."""
    logger = logging.getLogger(__name__)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s - spotify_engine - %(levelname)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class DagsterHomeError(Exception):
    """``$DAGSTER_HOME`` cannot be written; the message names the folder."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_is_gone(instance: dg.DagsterInstance, run_id: str) -> list[int] | None:
    """The process ids a run's RUN_START and STEP_START events recorded when every one of them is
    gone (the run was killed); None while one lives or none is recorded yet."""
    pids = {
        entry.dagster_event.pid
        for entry in instance.all_logs(run_id, of_type=_PROCESS_EVENTS)
        if entry.dagster_event and entry.dagster_event.pid
    }
    return sorted(pids) if pids and not any(process_alive(pid) for pid in pids) else None


def release_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun, pids: list[int]) -> None:
    """Mark a run whose processes are gone failed (unless it ended) and free its pool slots."""
    if not run.is_finished:
        instance.report_run_failed(run, f"run process {pids} is gone (killed); marked failed, pool slots freed")
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def free_dead_holders(instance: dg.DagsterInstance, pool: str, waiting_run_id: str) -> tuple[list[str], list[str]]:
    """Free ``pool``'s slots held by runs that can no longer free them (deleted, or every process
    gone); returns (freed run ids, run ids still holding a slot)."""
    storage = instance.event_log_storage
    freed, holding = [], []
    for run_id in sorted({slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots} - {waiting_run_id}):
        run = instance.get_run_by_id(run_id)
        pids = None if run is None or run.status in _LIVE_STATUSES else run_is_gone(instance, run_id)
        if run is None:
            storage.free_concurrency_slots_for_run(run_id)
        elif pids is not None:
            release_dead_run(instance, run, pids)
        else:
            holding.append(run_id)
            continue
        freed.append(run_id)
    return freed, holding


def _home_error(home: str, cause: object) -> DagsterHomeError:
    return DagsterHomeError(
        f"Dagster home {home} is not writable ({cause}); runs record their events there: make the folder "
        "writable or set DAGSTER_HOME to a writable folder"
    )


def check_home_writable(home: str) -> None:
    """:class:`DagsterHomeError` unless ``home``, its storage folders and their shared SQLite files can be
    written (tried, not judged from the mode bits: root ignores those, not an immutable flag)."""
    folders = [Path(home), Path(home) / "history", Path(home) / "history" / "runs", Path(home) / "schedules"]
    databases = [folders[1] / "runs.db", folders[2] / "index.db", folders[3] / "schedules.db"]
    try:
        for folder in (f for f in folders if f.is_dir()):
            with tempfile.TemporaryFile(dir=folder):
                pass
        for database in (d for d in databases if d.exists()):
            with open(database, "r+b"):
                pass
    except OSError as error:
        raise _home_error(home, error) from None


@contextlib.contextmanager
def _writable_home(home: str) -> Iterator[None]:
    """SQLite's "readonly database" / "unable to open database file" as :class:`DagsterHomeError`."""
    try:
        yield
    except sqlalchemy.exc.OperationalError as error:
        if "readonly" in str(error) or "unable to open" in str(error):
            raise _home_error(home, error.orig) from None
        raise


class _GuardedRunStorage(SqliteRunStorage):
    """SQLite run storage naming a home it cannot write."""

    _home = ""

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        with _writable_home(self._home), super().connect() as conn:
            yield conn


class _GuardedEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage that frees dead runs' pool slots and names a home it cannot write."""

    def __init__(self, base_dir: str, home: str) -> None:
        self._home = home  # before the parent's initialization, which connects
        self._waits: dict[tuple[str, str], float] = {}  # (run, step) -> when its wait was last logged
        super().__init__(base_dir)

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with _writable_home(self._home), super()._connect(shard) as conn:
            yield conn

    def claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None
    ) -> ConcurrencyClaimStatus:
        status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)
        if status.is_claimed:
            self._waits.pop((run_id, step_key), None)
            return status
        if check_captured_interrupt():
            raise DagsterExecutionInterruptedError(
                f"interrupted while step {step_key} waited for pool {concurrency_key!r}"
            )
        freed, holding = free_dead_holders(self._instance, concurrency_key, run_id)
        if freed:
            self._log(
                run_id,
                step_key,
                f"pool {concurrency_key!r}: freed the slots of run(s) {', '.join(freed)}, "
                "whose processes are gone (marked failed)",
            )
            status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)
            if status.is_claimed:
                return status
        last = self._waits.get((run_id, step_key))
        if last is None or time.monotonic() - last >= WAIT_LOG_INTERVAL_S:
            self._waits[(run_id, step_key)] = time.monotonic()
            self._log(
                run_id,
                step_key,
                f"step {step_key} waits for a slot of pool {concurrency_key!r}, held by run(s) "
                f"{', '.join(holding) or '(none: the slot is being handed over)'}",
            )
        # wait here and have Dagster claim again at once: its in-process executor otherwise spins on a
        # full pool (no sleep between its checks) and polls the storage only every 1 to 15 s
        time.sleep(CLAIM_POLL_S)
        return status.with_sleep_interval(0.0)

    def _log(self, run_id: str, step_key: str, message: str) -> None:
        """An INFO engine event on the waiting run (the UI's run log) and a line on stderr (the
        engine event bypasses the run's console logger)."""
        _console().info(f"{run_id} - {message}")
        run = self._instance.get_run_by_id(run_id)
        if run is not None:
            self._instance.report_engine_event(message, run, step_key=step_key)


class ProjectSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage with :class:`_GuardedEventLogStorage` as its event log; fails at
    once, naming the folder, when the home is not writable."""

    def __init__(self, base_dir: str, inst_data=None) -> None:  # DagsterSqliteStorage's, with the guarded storages
        check_home_writable(base_dir)
        self.base_dir = base_dir
        self._run_storage = _GuardedRunStorage.from_local(_runs_directory(base_dir))
        self._run_storage._home = base_dir
        self._event_log_storage = _GuardedEventLogStorage(_event_logs_directory(base_dir), base_dir)
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> ProjectSqliteStorage:
        Path(config_value["base_dir"]).mkdir(parents=True, exist_ok=True)
        return cls(config_value["base_dir"], inst_data=inst_data)
