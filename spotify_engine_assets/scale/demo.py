"""The scale-out profile end to end, on one machine: PostgreSQL (run, event-log and schedule
storage), the code location as its own gRPC server, ``dagster-daemon run`` with the
QueuedRunCoordinator, and an asset backfill of every listening model config
(``listening/trained_model`` + ``listening/metric_report``) that the daemon launches as
concurrent runs. Every service is stopped at the end (also on an error or SIGTERM), and
``stop_services`` ends whatever a killed demo left (``make scale-demo`` calls it from a trap).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import profile as prof
from .postgres import PostgresServer, free_port

PIDS_FILE = "services.json"
CHAIN = "listening"


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def _spawn(name: str, args: list[str], env: dict, logs: Path, profile_dir: Path) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pids_path = profile_dir / PIDS_FILE
    pids = json.loads(pids_path.read_text()) if pids_path.exists() else {}
    pids[name] = proc.pid
    pids_path.write_text(json.dumps(pids))
    return proc


def _end_group(pid: int, grace: float = 15) -> None:
    """SIGTERM the process group this demo started (its leader ``pid``), SIGKILL after ``grace``;
    the leader is reaped when it is this process's child (an unreaped leader stays a zombie, which
    the group check would count as alive until the grace ran out)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_services(profile_dir: Path, remove_data: bool = True) -> list[str]:
    """Stop the daemon, the gRPC server (and the runs it launched) and PostgreSQL recorded in
    ``profile_dir``; returns what was stopped."""
    stopped = []
    pids_path = profile_dir / PIDS_FILE
    if pids_path.exists():
        for name, pid in json.loads(pids_path.read_text()).items():
            _end_group(pid)
            stopped.append(f"{name} (pid {pid})")
        pids_path.unlink()
    server = PostgresServer.load_state(profile_dir)
    if server is not None:
        server.remove() if remove_data else server.stop()
        (profile_dir / "postgres.json").unlink(missing_ok=True)
        stopped.append(f"postgres (port {server.port})")
    return stopped


def start_instance(profile_dir: Path, max_concurrent_runs: int = 2) -> tuple[PostgresServer, Path, dict]:
    """PostgreSQL (recorded for :func:`stop_services`) with the Dagster database, the instance's
    home and the environment every process of the profile runs with (the password only in it)."""
    server = PostgresServer.create(profile_dir)
    server.save_state(profile_dir)
    server.start()
    server.create_database(prof.DAGSTER_DB)
    home = profile_dir / "dagster_home"
    prof.write_home(home, max_concurrent_runs)
    env = {
        **os.environ,
        **prof.server_env(server),
        "DAGSTER_HOME": str(home),
        "SPOTIFY_ENGINE_DATA_LAKE": str(profile_dir / "lake"),
    }
    return server, home, env


def _wait_grpc(port: int, proc: subprocess.Popen, env: dict, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the gRPC code server exited ({proc.returncode}); see its log")
        check = subprocess.run(
            [_bin("dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            capture_output=True,
        )
        if check.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gRPC code server on 127.0.0.1:{port} did not answer in {timeout:g} s")
        time.sleep(1)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end before a start at the same time)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1])
    )
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def submit_backfill(instance, partitions: list[str], run_config: dict, title: str) -> str:
    """An asset backfill of the chain's trained_model + metric_report over ``partitions`` (what the
    UI's *Materialize → partitions* submits); the daemon's backfill loop launches its runs."""
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from ..definitions import defs

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=partitions,
        asset_selection=[dg.AssetKey([CHAIN, "trained_model"]), dg.AssetKey([CHAIN, "metric_report"])],
        backfill_timestamp=time.time(),
        tags={"spotify_engine/scale_demo": title},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=None,
        run_config=run_config,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def wait_backfill(instance, backfill_id: str, timeout: float, log=print) -> str:
    from dagster._core.execution.backfill import BulkActionStatus

    deadline, last = time.monotonic() + timeout, None
    while True:
        status = instance.get_backfill(backfill_id).status
        runs = instance.get_runs(filters=_backfill_filter(backfill_id))
        summary = ", ".join(f"{s}: {n}" for s, n in sorted(_count(r.status.value for r in runs).items()))
        if summary != last:
            log(f"  backfill {backfill_id} {status.value}; runs {summary or 'none yet'}")
            last = summary
        if status != BulkActionStatus.REQUESTED:
            return status.value
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} not done after {timeout:g} s (status {status.value})")
        time.sleep(2)


def _launch_time(instance, run_id: str) -> float | None:
    """When the run's process was launched (its RUN_STARTING event)."""
    from dagster._core.events import DagsterEventType

    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_STARTING)
    return events[0].timestamp if events else None


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _backfill_filter(backfill_id: str):
    import dagster as dg

    return dg.RunsFilter(tags={"dagster/backfill": backfill_id})


def run_demo(
    profile_dir: Path,
    profile: str = "tiny",
    max_concurrent_runs: int = 2,
    configs: list[str] | None = None,
    timeout: float = 1800,
    log=print,
) -> dict:
    """Start every service, materialize the data stage, backfill the model configs through the
    daemon, stop everything; returns the summary (also ``profile_dir/summary.json``)."""
    from ..definitions import defs
    from ..defs.resources import DUCKDB_POOL, init_warehouse_pool
    from ..runner import data_stage, profile_configs, run_stage

    began = time.monotonic()
    profile_dir = profile_dir.resolve()
    stop_services(profile_dir)  # whatever a killed earlier demo left
    profile_dir.mkdir(parents=True, exist_ok=True)
    logs = profile_dir / "logs"
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM also runs the finally below
    summary: dict = {"profile": profile, "max_concurrent_runs_setting": max_concurrent_runs}
    try:
        t = time.monotonic()
        server, home, env = start_instance(profile_dir, max_concurrent_runs)
        summary["postgres_start_s"] = round(time.monotonic() - t, 1)
        log(f"postgres: 127.0.0.1:{server.port}, data {server.data_dir} ({summary['postgres_start_s']} s)")
        os.environ.update({k: env[k] for k in (*prof.ENV.values(), "DAGSTER_HOME", "SPOTIFY_ENGINE_DATA_LAKE")})

        t = time.monotonic()
        port = free_port()
        grpc = _spawn(
            "grpc",
            [
                _bin("dagster"),
                "api",
                "grpc",
                "-m",
                "spotify_engine_assets.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--location-name",
                prof.LOCATION,
            ],
            env,
            logs,
            profile_dir,
        )
        workspace = prof.write_workspace(profile_dir / "workspace.yaml", port)
        instance = prof.load_instance(home)
        init_warehouse_pool(instance)
        _wait_grpc(port, grpc, env)
        summary["grpc_start_s"] = round(time.monotonic() - t, 1)
        log(f"code server: dagster api grpc on 127.0.0.1:{port} ({summary['grpc_start_s']} s); workspace {workspace}")

        data_config, train_config = profile_configs(CHAIN, profile)
        data = run_stage("data", defs, instance, data_stage(CHAIN), data_config)
        summary["data_stage_s"] = round(data.seconds, 1)
        log(data.line())
        if not data.success:
            raise RuntimeError(f"data stage failed: {data.error}")

        known = sorted(instance.get_dynamic_partitions(f"{CHAIN}_configs"))
        partitions = configs or known
        unknown = sorted(set(partitions) - set(known))
        if unknown:
            raise ValueError(f"unknown model configs {unknown}; known: {', '.join(known)}")
        submitted = time.time()
        backfill_id = submit_backfill(instance, partitions, train_config, f"scale demo ({profile})")
        log(f"backfill {backfill_id}: {len(partitions)} partitions of {CHAIN}_configs: {', '.join(partitions)}")

        _spawn("daemon", [_bin("dagster-daemon"), "run", "-w", str(workspace)], env, logs, profile_dir)
        status = wait_backfill(instance, backfill_id, timeout, log)

        records = instance.get_run_records(filters=_backfill_filter(backfill_id))
        intervals = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
        launched = [
            (_launch_time(instance, r.dagster_run.run_id) or r.start_time, r.end_time)
            for r in records
            if r.start_time and r.end_time
        ]
        statuses = _count(r.dagster_run.status.value for r in records)
        materialized = sorted(
            key
            for key in instance.get_materialized_partitions(__import__("dagster").AssetKey([CHAIN, "metric_report"]))
            if key in partitions
        )
        pool = instance.event_log_storage.get_concurrency_info(DUCKDB_POOL)
        summary.update(
            backfill_id=backfill_id,
            backfill_status=status,
            partitions=partitions,
            runs=len(records),
            run_statuses=statuses,
            materialized_metric_reports=materialized,
            max_concurrent_runs_seen=max_overlap(intervals),  # executing: RUN_START to run end
            max_concurrent_runs_launched=max_overlap(launched),  # process launched (RUN_STARTING) to run end
            runs_wall_s=round(max(e for _, e in intervals) - min(s for s, _ in intervals), 1) if intervals else None,
            backfill_wall_s=round(max((e for _, e in intervals), default=submitted) - submitted, 1),
            run_seconds={
                r.dagster_run.tags.get("dagster/partition"): round(r.end_time - r.start_time, 1)
                for r in records
                if r.start_time and r.end_time
            },
            pool={
                "name": DUCKDB_POOL,
                "slot_count": pool.slot_count,
                "active_slots": pool.active_slot_count,
                "pending_steps": pool.pending_step_count,
            },
        )
    finally:
        summary["stopped"] = stop_services(profile_dir)
        signal.signal(signal.SIGTERM, previous)
        summary["total_wall_s"] = round(time.monotonic() - began, 1)
        (profile_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"scale demo ({summary['profile']}): backfill {summary.get('backfill_status')}",
        f"  runs: {summary.get('runs')} {summary.get('run_statuses')}; metric reports materialized: "
        f"{len(summary.get('materialized_metric_reports', []))}/{len(summary.get('partitions', []))}",
        f"  max concurrent runs seen: {summary.get('max_concurrent_runs_seen')} "
        f"(from run start/end times; counting from process launch: {summary.get('max_concurrent_runs_launched')}; "
        f"setting {summary['max_concurrent_runs_setting']})",
        f"  backfill wall time: {summary.get('backfill_wall_s')} s (first run start to last run end "
        f"{summary.get('runs_wall_s')} s); data stage {summary.get('data_stage_s')} s",
        f"  per run: {summary.get('run_seconds')}",
        f"  warehouse pool: {summary.get('pool')}",
        f"  stopped: {', '.join(summary.get('stopped', []))}; total {summary.get('total_wall_s')} s",
    ]
    return "\n".join(lines)
