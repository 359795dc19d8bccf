"""Steps of listening-chain runs spread over Celery workers (``dagster-celery``, Redis broker).

Started here, all on 127.0.0.1 and all stopped at the end (also on an error or SIGTERM; ``stop``
ends what a killed demo left): PostgreSQL (the scale profile's Dagster instance, which the run's
orchestrating process and every worker share), ``redis-server`` (broker and result backend; no
persistence, its dir in the profile folder) and two ``dagster-celery worker start`` workers
(``--concurrency`` 1 each). The run's own process only orchestrates: it submits each step as a
Celery task to the broker, and a worker executes it against the shared instance and data lake.

Runs: the listening data stage (ingestion, SQL, graph, split, registry: one run of ~20 steps,
whose independent branches go to both workers), then the model stage of each ``--configs`` entry
(``trained_model`` + ``metric_report``, one run per partition, all launched at once). The summary
names, per step, the Celery worker (node name) and the process id that ran it, from the event log.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..core.presentation import group_name
from . import profile as prof
from .demo import PIDS_FILE, _bin, _count, _end_group, _spawn, start_instance
from .demo import stop_services as _stop_profile
from .postgres import free_port

CHAIN = "listening"
MODULE = "spotify_engine_assets.scale.celery_defs"
DATA_SELECTION = (
    f"group:{group_name(CHAIN, 'ingestion')} or group:{CHAIN}_sql or group:{CHAIN}_graph or key:{CHAIN}/model_registry"
)
MODEL_SELECTION = f"{CHAIN}/trained_model,{CHAIN}/metric_report"
WORKERS = ("worker1", "worker2")


def stop_services(profile_dir: Path) -> list[str]:
    """Stop the workers first (one whose broker is gone first would wait on reconnecting), then
    redis, then PostgreSQL (``demo.stop_services``)."""
    import json

    stopped, pids_path = [], profile_dir / PIDS_FILE
    if pids_path.exists():
        pids = json.loads(pids_path.read_text())
        for name in sorted(pids, key=lambda n: n not in WORKERS):
            _end_group(pids[name])
            stopped.append(f"{name} (pid {pids[name]})")
        pids_path.unlink()
    return stopped + _stop_profile(profile_dir)


class CeleryUnavailable(RuntimeError):
    """redis-server or dagster-celery is missing."""


def check_available() -> None:
    missing = []
    if not shutil.which("redis-server"):
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import dagster_celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as error:
        missing.append(f"{error.name} (pip install -e '.[scale]')")
    if missing:
        raise CeleryUnavailable("missing: " + ", ".join(missing))


VISIBILITY_TIMEOUT_S = 60  # a step's task unacknowledged this long is handed to another worker: > the longest step


def executor_config(redis_port: int, visibility_timeout_s: int = VISIBILITY_TIMEOUT_S) -> dict:
    """The celery executor's run config (the same block configures the workers).

    ``task_acks_late``: a step's task is acknowledged when it ends, not when a worker takes it, so
    the task of a worker killed whole (main process and pool) stays unacknowledged in Redis and,
    ``visibility_timeout_s`` after its delivery, another worker's sweep (every 5 s) puts it back on
    the queue and runs the step again (same task id: the run's orchestrator gets its result). The
    timeout must exceed the longest step, or a step still running is started a second time
    elsewhere. A pool process killed under a live worker is not redelivered
    (``task_reject_on_worker_lost`` stays off: a step that kills its process every time would loop):
    its task ends in ``WorkerLostError`` and the run fails, as Dagster's celery executor defines."""
    return {
        "execution": {
            "config": {
                "broker": f"redis://127.0.0.1:{redis_port}/0",
                "backend": f"redis://127.0.0.1:{redis_port}/1",
                "config_source": {
                    "worker_prefetch_multiplier": 1,
                    "broker_connection_retry_on_startup": True,
                    "task_acks_late": True,
                    "broker_transport_options": {
                        "visibility_timeout": visibility_timeout_s,
                        "unacked_restore_interval": 5,
                        "unacked_restore_throttle": 1,
                    },
                },
            }
        }
    }


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_redis(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({proc.returncode}); see its log")
        try:
            redis.Redis(host="127.0.0.1", port=port).ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on 127.0.0.1:{port} did not answer in {timeout:g} s") from None
            time.sleep(0.2)


def _wait_workers(logs: Path, procs: dict, timeout: float = 180) -> None:
    """Until every worker's log says ``ready.`` (Celery's line once it consumes from the broker)."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [name for name in procs if " ready." not in (logs / f"{name}.log").read_text(errors="replace")]
        if not waiting:
            return
        for name in waiting:
            if procs[name].poll() is not None:
                raise RuntimeError(f"celery worker {name} exited ({procs[name].returncode}); see {logs / name}.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"celery workers {waiting} not ready after {timeout:g} s")
        time.sleep(0.5)


def start_services(profile_dir: Path, log=print) -> dict:
    """PostgreSQL + Dagster home, redis-server and two celery workers; returns the environment,
    the executor config file and timings. Everything is recorded for :func:`stop_services`."""
    check_available()
    profile_dir = profile_dir.resolve()
    stop_services(profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    logs = profile_dir / "logs"
    times = {}

    t = time.monotonic()
    server, home, env = start_instance(profile_dir)
    # dagster-celery starts `celery` from PATH: the interpreter's own bin folder first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    times["postgres_start_s"] = round(time.monotonic() - t, 1)
    log(f"postgres: 127.0.0.1:{server.port} ({times['postgres_start_s']} s)")

    t = time.monotonic()
    redis_port = free_port()
    redis_dir = profile_dir / "redis"
    redis_dir.mkdir(exist_ok=True)
    redis_proc = _spawn(
        "redis",
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis_port),
            "--dir",
            str(redis_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        env,
        logs,
        profile_dir,
    )
    _wait_redis(redis_port, redis_proc)
    for name in WORKERS:  # _wait_workers reads "ready." from these logs: start them empty
        (logs / f"{name}.log").unlink(missing_ok=True)
    times["redis_start_s"] = round(time.monotonic() - t, 1)
    log(f"redis: 127.0.0.1:{redis_port} ({times['redis_start_s']} s)")

    config = _write_yaml(profile_dir / "celery.yaml", executor_config(redis_port))
    t = time.monotonic()
    procs = {
        name: _spawn(
            name,
            [
                _bin("dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(config),
                "-n",
                name,
                "--",
                "--concurrency=1",
            ],
            env,
            logs,
            profile_dir,
        )
        for name in WORKERS
    }
    _wait_workers(logs, procs)
    times["workers_start_s"] = round(time.monotonic() - t, 1)
    log(f"celery workers {', '.join(WORKERS)} ready ({times['workers_start_s']} s)")
    return {"env": env, "config": config, "times": times, "home": home, "logs": logs, "redis_port": redis_port}


def materialize(
    env: dict, config: Path, selection: str, extra_configs: list[str], partition: str | None, log_path: Path
) -> subprocess.Popen:
    """``dagster asset materialize`` of ``selection`` from the celery definitions (the CLI process
    orchestrates; the steps run on the workers)."""
    from ..runner import configs_dir

    args = [_bin("dagster"), "asset", "materialize", "-m", MODULE, "--select", selection, "-c", str(config)]
    for name in extra_configs:
        args += ["-c", str(configs_dir() / "run" / name)]
    if partition:
        args += ["--partition", partition]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def step_placement(instance, run_id: str) -> dict:
    """Per step: the celery worker (node name) that took the task, the process id that executed
    it, its duration and outcome, read from the run's event log."""
    from dagster._core.events import DagsterEventType

    steps: dict = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        key = (event.step_key if event else None) or entry.step_key
        if event is None or not key:
            continue
        step = steps.setdefault(key, {})
        # the worker's own engine event (dagster_celery.tasks): its step key is on the event only
        if event.event_type == DagsterEventType.ENGINE_EVENT and "in celery worker" in (event.message or ""):
            worker = event.engine_event_data.metadata.get("Celery worker")
            step["worker"] = getattr(worker, "value", worker)
        elif event.event_type == DagsterEventType.STEP_START:
            step["pid"], step["start"] = event.pid, entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step["status"] = "success" if event.event_type == DagsterEventType.STEP_SUCCESS else "failure"
            if "start" in step:
                step["seconds"] = round(entry.timestamp - step["start"], 2)
    for step in steps.values():
        step.pop("start", None)
    return steps


def _runs_since(instance, since: float) -> list:
    import datetime

    import dagster as dg

    after = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
    return list(reversed(instance.get_run_records(filters=dg.RunsFilter(created_after=after))))


def describe_run(instance, record) -> dict:
    run = record.dagster_run
    return {
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition"),
        "status": run.status.value,
        "seconds": round(record.end_time - record.start_time, 1) if record.end_time and record.start_time else None,
        "steps": step_placement(instance, run.run_id),
    }


def _failure_text(instance, run_id: str) -> str:
    """The run's failure as Dagster recorded it (the executor's error, first lines)."""
    from dagster._core.events import DagsterEventType

    texts = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type not in (
            DagsterEventType.RUN_FAILURE,
            DagsterEventType.ENGINE_EVENT,
            DagsterEventType.STEP_FAILURE,
        ):
            continue
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            texts.append(" ".join(error.to_string().split())[:400])
        elif event.event_type == DagsterEventType.RUN_FAILURE:
            texts.append(event.message or "")
    return " | ".join(texts)


def _start_and_find_step(
    instance, env: dict, config: Path, partition: str, logs: Path, timeout: float, step: str, label: str
) -> tuple[subprocess.Popen, int, str | None, float]:
    """Launch ``partition``'s model stage and wait until ``step`` has started on a worker: the
    CLI process, the step's process id and worker, and when the runs were searched from."""
    since = time.time()
    proc = materialize(env, config, MODEL_SELECTION, ["tiny_train.yaml"], partition, logs / f"{label}_{partition}.log")
    deadline, pid, worker = time.monotonic() + timeout, None, None
    while pid is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{step} of {partition} never started (exit {proc.poll()})")
        for record in _runs_since(instance, since):
            placement = step_placement(instance, record.dagster_run.run_id).get(step, {})
            if placement.get("pid"):
                pid, worker = placement["pid"], placement.get("worker")
        time.sleep(0.2)
    return proc, pid, worker, since


def _rerun(instance, env: dict, config: Path, partition: str, logs: Path, timeout: float, log=print) -> dict:
    """Materialize ``partition``'s model stage again; its run, exit code, seconds and whether its
    metric report is now materialized."""
    import dagster as dg

    t, since = time.monotonic(), time.time()
    code = materialize(
        env, config, MODEL_SELECTION, ["tiny_train.yaml"], partition, logs / f"rerun_{partition}.log"
    ).wait(timeout=timeout)
    rerun = _runs_since(instance, since)[-1]
    result = {
        "rerun_exit_code": code,
        "rerun": describe_run(instance, rerun),
        "rerun_s": round(time.monotonic() - t, 1),
        "metric_report_materialized": partition
        in instance.get_materialized_partitions(dg.AssetKey([CHAIN, "metric_report"])),
    }
    log(f"re-run {rerun.dagster_run.run_id[:8]} {rerun.dagster_run.status.value} in {result['rerun_s']} s")
    return result


def kill_mid_step(
    instance,
    env: dict,
    config: Path,
    partition: str,
    logs: Path,
    timeout: float,
    step: str = f"{CHAIN}__trained_model",
    log=print,
) -> dict:
    """Run ``partition``'s model stage, SIGKILL the worker process executing ``step`` once it has
    started, wait for the run's end; then re-run the partition. Returns both runs' outcomes."""
    proc, pid, worker, since = _start_and_find_step(instance, env, config, partition, logs, timeout, step, "fault")
    time.sleep(1.0)  # mid-step: the model is training
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    log(f"killed {worker} process {pid} running {step} of {partition}")
    code = proc.wait(timeout=timeout)
    failed = _runs_since(instance, since)[-1]
    result = {
        "killed_pid": pid,
        "killed_worker": worker,
        "exit_code": code,
        "failed_run": {**describe_run(instance, failed), "failure": _failure_text(instance, failed.dagster_run.run_id)},
        "seconds_to_fail": round(time.monotonic() - killed_at, 1),
    }
    log(
        f"run {failed.dagster_run.run_id[:8]} {failed.dagster_run.status.value} {result['seconds_to_fail']} s "
        f"after the kill: {result['failed_run']['failure'][:300]}"
    )
    result.update(_rerun(instance, env, config, partition, logs, timeout, log))
    return result


def _parent_pid(pid: int) -> int:
    """The parent of a live process (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def step_attempts(instance, run_id: str, step: str) -> list[dict]:
    """Every time a celery worker began ``step`` in the run: the worker and the event's time."""
    attempts = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if (
            event is not None
            and (event.step_key or entry.step_key) == step
            and "in celery worker" in (event.message or "")
        ):
            worker = event.engine_event_data.metadata.get("Celery worker")
            attempts.append({"worker": getattr(worker, "value", worker), "at": entry.timestamp})
    return attempts


def kill_worker_mid_step(
    instance,
    env: dict,
    config: Path,
    partition: str,
    logs: Path,
    timeout: float,
    step: str = f"{CHAIN}__trained_model",
    log=print,
) -> dict:
    """Run ``partition``'s model stage and SIGKILL the whole Celery worker executing ``step`` (its
    main process: the kernel then kills its pool process, which Celery starts with
    ``PR_SET_PDEATHSIG``) once the step has started; wait for the run's end (the unacknowledged
    task is redelivered to the other worker after the visibility timeout); then re-run the
    partition. Returns what happened, with the seconds from the kill to the step's second start
    and to the run's end."""
    proc, pid, worker, since = _start_and_find_step(
        instance, env, config, partition, logs, timeout, step, "worker_fault"
    )
    main = _parent_pid(pid)
    command = Path(f"/proc/{main}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "celery" not in command or " worker" not in command:
        raise RuntimeError(f"the parent {main} of step process {pid} is not a celery worker: {command!r}")
    time.sleep(1.0)  # mid-step: the model is training
    os.kill(main, signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), time.time()
    log(f"killed the whole worker {worker}: main process {main} (pool process {pid}) running {step} of {partition}")
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None  # still waiting on the lost task: the run stays STARTED
    record = _runs_since(instance, since)[-1]
    run_id = record.dagster_run.run_id
    attempts = step_attempts(instance, run_id, step)
    later = [a for a in attempts if a["at"] > killed_wall]
    result = {
        "killed_main_pid": main,
        "killed_pool_pid": pid,
        "killed_worker": worker,
        "exit_code": code,
        "run": {**describe_run(instance, record), "failure": _failure_text(instance, run_id)},
        "step_workers": [a["worker"] for a in attempts],
        "seconds_to_redelivery": round(later[0]["at"] - killed_wall, 1) if later else None,
        "seconds_to_end": round(time.monotonic() - killed_at, 1) if code is not None else None,
        "pool_process_alive": Path(f"/proc/{pid}").exists(),
    }
    log(
        f"run {run_id[:8]} {record.dagster_run.status.value} {result['seconds_to_end']} s after the kill; {step} ran on "
        f"{', '.join(result['step_workers'])} (again {result['seconds_to_redelivery']} s after the kill)"
    )
    if code is None:
        proc.kill()
        proc.wait()
        return result
    result.update(_rerun(instance, env, config, partition, logs, timeout, log))
    return result


def run_celery_demo(
    profile_dir: Path,
    configs: list[str],
    timeout: float = 1800,
    kill: str | None = None,
    kill_worker: str | None = None,
    log=print,
) -> dict:
    """Start the services, run the data stage and the model stage of ``configs`` through the
    celery workers, then the faults (``kill``: a pool process, :func:`kill_mid_step`;
    ``kill_worker``: a whole worker, :func:`kill_worker_mid_step`), stop everything; returns the
    summary (also ``profile_dir/celery_summary.json``)."""
    began = time.monotonic()
    profile_dir = profile_dir.resolve()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary: dict = {"configs": configs, "workers": list(WORKERS)}
    try:
        services = start_services(profile_dir, log)
        summary.update(services["times"])
        env, config = services["env"], services["config"]
        os.environ.update({k: env[k] for k in (*prof.ENV.values(), "DAGSTER_HOME", "SPOTIFY_ENGINE_DATA_LAKE")})
        instance = prof.load_instance(services["home"])
        from ..defs.resources import init_warehouse_pool

        init_warehouse_pool(instance)

        t, since = time.monotonic(), time.time()
        proc = materialize(env, config, DATA_SELECTION, ["tiny_data.yaml"], None, services["logs"] / "data_stage.log")
        if proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"data stage failed; see {services['logs'] / 'data_stage.log'}")
        summary["data_stage_s"] = round(time.monotonic() - t, 1)
        summary["data_run"] = describe_run(instance, _runs_since(instance, since)[-1])
        log(f"data stage: {summary['data_run']['status']} in {summary['data_stage_s']} s")

        t, since = time.monotonic(), time.time()
        procs = {
            c: materialize(env, config, MODEL_SELECTION, ["tiny_train.yaml"], c, services["logs"] / f"model_{c}.log")
            for c in configs
        }
        codes = {c: p.wait(timeout=timeout) for c, p in procs.items()}
        summary["model_stage_s"] = round(time.monotonic() - t, 1)
        summary["model_runs"] = [describe_run(instance, r) for r in _runs_since(instance, since)]
        summary["model_exit_codes"] = codes
        log(f"model stage ({', '.join(configs)}): exit codes {codes} in {summary['model_stage_s']} s")
        runs = [summary["data_run"], *summary["model_runs"]]
        summary["steps_per_worker"] = _count(
            s.get("worker", "?").split("@")[0] for r in runs for s in r["steps"].values()
        )
        summary["success"] = all(r["status"] == "SUCCESS" for r in runs) and len(summary["model_runs"]) == len(configs)
        if kill:
            fault = summary["fault"] = kill_mid_step(instance, env, config, kill, services["logs"], timeout, log=log)
            summary["success"] = (
                summary["success"]
                and fault["failed_run"]["status"] == "FAILURE"
                and (fault["rerun"]["status"] == "SUCCESS" and fault["metric_report_materialized"])
            )
        if kill_worker:
            fault = summary["worker_fault"] = kill_worker_mid_step(
                instance, env, config, kill_worker, services["logs"], timeout, log=log
            )
            summary["success"] = (
                summary["success"]
                and fault["run"]["status"] == "SUCCESS"
                and (fault.get("rerun", {}).get("status") == "SUCCESS" and fault["metric_report_materialized"])
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
        summary.update(stopped=stop_services(profile_dir), total_wall_s=round(time.monotonic() - began, 1))
        (profile_dir / "celery_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"celery demo: {'ok' if summary.get('success') else 'FAILED'}; workers {', '.join(summary['workers'])}; "
        f"start postgres {summary.get('postgres_start_s')} s, redis {summary.get('redis_start_s')} s, "
        f"workers {summary.get('workers_start_s')} s"
    ]
    for label, run in [("data stage", summary.get("data_run"))] + [
        (f"model {r['partition']}", r) for r in summary.get("model_runs", [])
    ]:
        if not run:
            continue
        lines.append(f"  {label}: run {run['run_id'][:8]} {run['status']} {run['seconds']} s")
        for key, step in sorted(run["steps"].items(), key=lambda kv: kv[0]):
            lines.append(
                f"    {key:45s} {step.get('worker', '?'):28s} pid {step.get('pid')} "
                f"{step.get('seconds', '?')} s {step.get('status', '?')}"
            )
    lines.append(
        f"  steps per worker: {summary.get('steps_per_worker')}; data stage {summary.get('data_stage_s')} s, "
        f"model stage {summary.get('model_stage_s')} s"
    )
    fault = summary.get("fault")
    if fault:
        lines.append(
            f"  fault: SIGKILL of {fault['killed_worker']} process {fault['killed_pid']} mid-step -> run "
            f"{fault['failed_run']['status']} {fault['seconds_to_fail']} s later: {fault['failed_run']['failure'][:300]}"
        )
        lines.append(
            f"  re-run: {fault['rerun']['status']} in {fault['rerun_s']} s; metric report materialized: "
            f"{fault['metric_report_materialized']}"
        )
    fault = summary.get("worker_fault")
    if fault:
        lines.append(
            f"  whole worker killed: SIGKILL of {fault['killed_worker']} main process {fault['killed_main_pid']} "
            f"mid-step -> {fault['run']['status']} {fault['seconds_to_end']} s later; the step ran on "
            f"{', '.join(fault['step_workers'])} (again {fault['seconds_to_redelivery']} s after the kill)"
        )
        if "rerun" in fault:
            lines.append(
                f"  re-run: {fault['rerun']['status']} in {fault['rerun_s']} s; metric report materialized: "
                f"{fault['metric_report_materialized']}"
            )
    lines.append(f"  stopped: {', '.join(summary.get('stopped', []))}; total {summary.get('total_wall_s')} s")
    return "\n".join(lines)
