"""One Optuna study of the listening chain on PostgreSQL, run by several worker processes at once.

``python -m spotify_engine_assets.scale study --workers 2 --trials 3`` starts a throwaway
PostgreSQL server (``postgres.py``; or uses ``--url``), builds the tiny listening world's graph and
random split Dagster-free (as ``benchmarks/bench_hpo.py`` does), launches the workers on one study
(``core/experiments/hpo.py``: worker 0 alone enqueues the registry config, samplers seeded per
worker), SIGKILLs one worker as soon as it has finished a trial and started the next, restarts it
after the storage's grace period, and checks and prints the outcome: trials per worker session,
unique trial numbers, distinct parameters, the killed trial failed by the heartbeat (not left
RUNNING), trials from before and after the kill, the best value. Then it stops the server.

The storage URL carries no password (``postgresql+psycopg2://user@host:port/optuna``): workers
get it from ``$SPOTIFY_ENGINE_PG_PASSWORD`` (``hpo.open_storage`` hands it to the driver). Optuna
leaves the trial a killed worker was running RUNNING; the RDB storage's heartbeat
(``heartbeat_interval`` / ``grace_period``, here 1 s / 4 s; 60 s / 180 s by default) marks it FAIL
at the next start of a trial or of :func:`hpo.run_study` once it is stale. Its parameters are
not retried: the samplers draw new points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WORLDS = {"tiny": dict(users=150, songs=600, artists=60, genres=10, days=14, seed=7)}  # configs/run/tiny_data.yaml
STUDY_NAME = "scale/listening/{family}"
REPO = Path(__file__).resolve().parents[2]


def study_data(world: str = "tiny"):
    """The chain's graph and random split of a generated world (no Dagster, no data lake)."""
    from ..core.data.splits import labels_to_indices
    from ..core.experiments import hpo
    from ..datasets.listening import DATASET
    from ..datasets.listening.generator import GeneratorSettings, generate_world
    from ..datasets.listening.graph import LISTENS, graph_from_world
    from ..datasets.listening.splits import SplitSettings, random_split

    graph = graph_from_world(generate_world(GeneratorSettings(**WORLDS[world])))
    parts = labels_to_indices(random_split(graph[LISTENS].edge_index[0].numpy(), SplitSettings()))
    return hpo.StudyData(DATASET, graph, parts)


def postgres_url(server, db: str) -> str:
    """A SQLAlchemy URL of ``db`` on ``server`` without the password."""
    return f"postgresql+psycopg2://{server.user}@{server.host}:{server.port}/{db}"


def run_worker(
    url: str,
    worker: int,
    trials: int,
    family: str = "lightgcn",
    max_epochs: int = 3,
    world: str = "tiny",
    seed: int = 0,
    heartbeat: int = 1,
    grace: int = 4,
    study_name: str | None = None,
) -> None:
    """One worker session: open the shared study and run ``trials`` trials (log lines to stdout)."""
    import torch

    from ..core.experiments import hpo
    from ..datasets.listening import DATASET

    torch.set_num_threads(1)
    storage = hpo.open_storage(url, heartbeat_interval=heartbeat, grace_period=grace)
    space = hpo.get_space(DATASET, family)
    study = hpo.open_study(
        DATASET, family, storage, seed=seed, worker=worker, study_name=study_name or STUDY_NAME.format(family=family)
    )
    data = study_data(world)
    print(
        f"worker {worker} (pid {os.getpid()}): {trials} trials of {study.study_name!r} on {hpo.redact(url)}", flush=True
    )
    hpo.run_study(
        study,
        space,
        data,
        n_trials=trials,
        max_epochs=max_epochs,
        worker=worker,
        log=lambda message: print(f"worker {worker}: {message}", flush=True),
    )


@dataclass
class StudyReport:
    study_name: str
    url: str
    trials: list[dict] = field(default_factory=list)  # number, state, value, worker, pid, params
    killed: dict = field(default_factory=dict)  # worker, pid, running trial, seconds after start
    restarted_pid: int | None = None
    seconds: float = 0.0
    best: tuple[int, float] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _worker_cmd(url: str, worker: int, trials: int, options: dict) -> list[str]:
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    return [
        sys.executable,
        "-m",
        "spotify_engine_assets.scale",
        "study-worker",
        f"--url={url}",
        f"--worker={worker}",
        f"--trials={trials}",
        *flags,
    ]


def run_shared_study(
    profile_dir: Path,
    workers: int = 2,
    trials: int = 3,
    family: str = "lightgcn",
    max_epochs: int = 3,
    world: str = "tiny",
    seed: int = 0,
    kill: bool = True,
    heartbeat: int = 1,
    grace: int = 4,
    url: str | None = None,
    timeout: float = 900,
    log=print,
) -> StudyReport:
    """Start PostgreSQL (unless ``url`` names a database: its password in the environment), run
    ``workers`` worker processes of ``trials`` trials each on one study, kill and restart the last
    worker once (``kill``), stop the server; returns the checked :class:`StudyReport`."""
    import optuna

    from ..core.experiments import hpo
    from . import profile as prof
    from .postgres import PostgresServer

    if workers < 1 or (trials < 2 and kill):
        raise ValueError("need workers >= 1 and, to kill a worker mid-run, trials >= 2")
    profile_dir = Path(profile_dir).resolve()
    profile_dir.mkdir(parents=True, exist_ok=True)
    server = None
    saved_password = None
    started = time.monotonic()
    processes: dict[int, subprocess.Popen] = {}
    logs = []
    try:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
        }
        if url is None:
            server = PostgresServer.create(profile_dir).start()
            server.create_database(prof.OPTUNA_DB)
            url = postgres_url(server, prof.OPTUNA_DB)
            env[hpo.PASSWORD_ENV[0]] = server.password  # by environment only: never in the URL or a file
            saved_password = os.environ.get(hpo.PASSWORD_ENV[0])
            os.environ[hpo.PASSWORD_ENV[0]] = server.password  # this process polls the study too
            log(f"PostgreSQL {server.host}:{server.port} started in {time.monotonic() - started:.1f} s")
        name = STUDY_NAME.format(family=family) + f"/{int(time.time())}"
        report = StudyReport(name, hpo.redact(url))
        options = dict(
            family=family,
            max_epochs=max_epochs,
            world=world,
            seed=seed,
            heartbeat=heartbeat,
            grace=grace,
            study_name=name,
        )

        def launch(worker: int, count: int) -> subprocess.Popen:
            out = open(profile_dir / f"worker{worker}-{len(logs)}.log", "w")  # noqa: SIM115 - closed with `logs`
            logs.append(out)
            return subprocess.Popen(
                _worker_cmd(url, worker, count, options), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO)
            )

        for worker in range(workers):
            processes[worker] = launch(worker, trials)
        log(
            f"{workers} workers x {trials} trials of {family} (<= {max_epochs} epochs) on study {name!r} at "
            f"{hpo.redact(url)}"
        )
        poll = None
        victim = workers - 1
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in processes.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not finish in {timeout:.0f} s")
            for worker, process in processes.items():
                if process.poll() not in (None, 0):
                    raise RuntimeError(f"worker {worker} exited with {process.returncode}: see {logs[-1].name}")
            if kill and not report.killed:
                if poll is None:
                    try:
                        poll = optuna.load_study(study_name=name, storage=hpo.open_storage(url, heartbeat, grace))
                    except (KeyError, hpo.HpoError):
                        poll = None
                if poll is not None:
                    mine = [t for t in poll.get_trials(deepcopy=False) if t.user_attrs.get("worker") == victim]
                    done = [t for t in mine if t.state.is_finished()]
                    running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
                    if done and running:
                        process = processes[victim]
                        # stop it first, then make sure the trial is still running: a trial that ended
                        # (e.g. pruned) between the poll and the signal would make the kill hit no trial
                        process.send_signal(signal.SIGSTOP)
                        state = next(t.state for t in poll.get_trials(deepcopy=False) if t.number == running[0].number)
                        if state != optuna.trial.TrialState.RUNNING:
                            process.send_signal(signal.SIGCONT)
                            time.sleep(0.2)
                            continue
                        process.send_signal(signal.SIGKILL)
                        process.wait()
                        report.killed = {
                            "worker": victim,
                            "pid": process.pid,
                            "trial": running[0].number,
                            "finished_before": len(done),
                            "at_s": round(time.monotonic() - started, 1),
                        }
                        log(
                            f"SIGKILL worker {victim} (pid {process.pid}) during trial {running[0].number}, after "
                            f"{len(done)} finished trial(s)"
                        )
                        time.sleep(grace + heartbeat)  # a supervisor's back-off: the trial is stale by now
                        processes[victim] = launch(victim, trials - len(done))
                        report.restarted_pid = processes[victim].pid
                        log(f"restarted worker {victim} (pid {report.restarted_pid}) for {trials - len(done)} trial(s)")
                        continue
            time.sleep(0.2)
        for worker, process in processes.items():
            if process.returncode != 0:
                raise RuntimeError(f"worker {worker} exited with {process.returncode}")
        report.seconds = time.monotonic() - started
        study = optuna.load_study(study_name=name, storage=hpo.open_storage(url, heartbeat, grace))
        hpo.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False):
            report.trials.append(
                {
                    "number": trial.number,
                    "state": trial.state.name,
                    "value": trial.value,
                    "worker": trial.user_attrs.get("worker"),
                    "pid": trial.user_attrs.get("worker_pid"),
                    "enqueued": "enqueued" in trial.user_attrs,
                    "params": dict(trial.params),
                }
            )
        try:
            report.best = (study.best_trial.number, float(study.best_value))
        except ValueError:
            pass
        report.problems = check(report, workers, trials, kill)
        return report
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for out in logs:
            out.close()
        if server is not None:
            server.remove()
            if saved_password is None:
                os.environ.pop(hpo.PASSWORD_ENV[0], None)
            else:
                os.environ[hpo.PASSWORD_ENV[0]] = saved_password


def check(report: StudyReport, workers: int, trials: int, kill: bool) -> list[str]:
    """What is wrong with a finished shared study (empty: nothing)."""
    problems = []
    rows = report.trials
    numbers = [row["number"] for row in rows]
    if len(set(numbers)) != len(numbers) or sorted(numbers) != list(range(len(numbers))):
        problems.append(f"trial numbers not unique and consecutive: {numbers}")
    drawn = [tuple(sorted(row["params"].items())) for row in rows if row["params"]]
    if len(set(drawn)) != len(drawn):
        problems.append("two trials drew the same parameters")
    if sum(row["enqueued"] for row in rows) != 1:
        problems.append(f"{sum(row['enqueued'] for row in rows)} trials are the enqueued registry config, not 1")
    if any(row["state"] in ("RUNNING", "WAITING") for row in rows):
        problems.append(
            "trials left RUNNING/WAITING: "
            + ", ".join(str(r["number"]) for r in rows if r["state"] in ("RUNNING", "WAITING"))
        )
    finished = [row for row in rows if row["state"] in ("COMPLETE", "PRUNED")]
    if len(finished) != workers * trials:
        problems.append(f"{len(finished)} finished trials, expected {workers} x {trials}")
    for worker in range(workers):
        if sum(row["worker"] == worker for row in finished) != trials:
            problems.append(
                f"worker {worker} finished {sum(row['worker'] == worker for row in finished)} trials, not {trials}"
            )
    if kill:
        killed = report.killed
        if not killed:
            problems.append("no worker was killed (it finished before the kill condition held)")
        else:
            stale = next((row for row in rows if row["number"] == killed["trial"]), None)
            if stale is None or stale["state"] != "FAIL":
                problems.append(f"the killed worker's trial {killed['trial']} is {stale and stale['state']}, not FAIL")
            before = sum(row["pid"] == killed["pid"] and row["state"] != "FAIL" for row in rows)
            after = sum(row["pid"] == report.restarted_pid for row in rows)
            if before < 1 or after < 1:
                problems.append(f"not resumed: {before} trial(s) before the kill, {after} after it")
    return problems


def format_report(report: StudyReport) -> str:
    rows = report.trials
    sessions: dict[tuple, list[int]] = {}
    for row in rows:
        sessions.setdefault((row["worker"], row["pid"]), []).append(row["number"])
    lines = [f"study {report.study_name!r} on {report.url}: {len(rows)} trials in {report.seconds:.0f} s"]
    for (worker, pid), numbers in sorted(sessions.items(), key=lambda item: (str(item[0][0]), min(item[1]))):
        tag = (
            " (killed)"
            if report.killed and pid == report.killed["pid"]
            else (" (restarted)" if pid == report.restarted_pid else "")
        )
        lines.append(f"  worker {worker} pid {pid}{tag}: trials {numbers}")
    lines.append("| trial | state | value | worker | pid | params |")
    lines.append("|---|---|---|---|---|---|")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        lines.append(
            f"| {row['number']}{' (registry)' if row['enqueued'] else ''} | {row['state']} | {value} | "
            f"{row['worker']} | {row['pid']} | {params} |"
        )
    numbers = [row["number"] for row in rows]
    lines.append(
        f"trial numbers unique: {len(set(numbers)) == len(numbers)}; params distinct: "
        f"{len({tuple(sorted(r['params'].items())) for r in rows if r['params']}) == sum(bool(r['params']) for r in rows)}"
    )
    if report.killed:
        k = report.killed
        lines.append(
            f"killed worker {k['worker']} (pid {k['pid']}) at {k['at_s']} s during trial {k['trial']} after "
            f"{k['finished_before']} finished; restarted as pid {report.restarted_pid}: resumed with "
            f"{sum(r['pid'] == report.restarted_pid for r in rows)} trial(s) after the kill"
        )
    if report.best:
        lines.append(f"best: trial {report.best[0]}, value {report.best[1]:.4f}")
    lines.append("OK" if report.ok else "PROBLEMS: " + "; ".join(report.problems))
    return "\n".join(lines)
