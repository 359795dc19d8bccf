"""``python -m spotify_engine_assets.scale demo|stop|study``: the scale-out profile (see demo.py) and a
shared Optuna study on PostgreSQL run by several workers (see study.py)."""

import argparse
import sys
from pathlib import Path

from .demo import format_summary, run_demo, stop_services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotify_engine_assets.scale")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PostgreSQL + gRPC code server + daemon + a backfill of every listening config")
    demo.add_argument("--dir", default="build/scale", help="profile folder (Dagster home, lake, logs, summary)")
    demo.add_argument("--profile", choices=("tiny", "default"), default="tiny")
    demo.add_argument("--max-concurrent-runs", type=int, default=2)
    demo.add_argument("--configs", default="", help="comma-separated partitions (default: every listening config)")
    demo.add_argument("--timeout", type=float, default=3600)
    cel = sub.add_parser(
        "celery", help="redis + 2 dagster-celery workers: data stage and model configs, steps on the workers"
    )
    cel.add_argument("--dir", default="build/scale-celery", help="profile folder (Dagster home, lake, logs, summary)")
    cel.add_argument("--configs", default="gat_basic,lightgcn", help="comma-separated listening model configs")
    cel.add_argument(
        "--kill", default="", help="then SIGKILL the worker process training this config mid-step, re-run it"
    )
    cel.add_argument(
        "--kill-worker",
        default="",
        help="then SIGKILL the whole worker (main process) training this "
        "config mid-step: the task goes to the other worker after the visibility timeout; re-run it",
    )
    cel.add_argument("--timeout", type=float, default=1800)
    stop = sub.add_parser("stop", help="stop the services a demo in --dir left running")
    stop.add_argument("--dir", default="build/scale")
    study = sub.add_parser(
        "study", help="one Optuna study on PostgreSQL run by several worker processes, one killed mid-run and restarted"
    )
    study.add_argument("--dir", default="build/scale-study", help="folder for the server's data and the worker logs")
    study.add_argument(
        "--url",
        help="an existing database (no password in it: $SPOTIFY_ENGINE_PG_PASSWORD); "
        "default: start a throwaway PostgreSQL server",
    )
    study.add_argument("--no-kill", action="store_true", help="do not kill and restart a worker")
    study.add_argument("--timeout", type=float, default=900)
    worker = sub.add_parser("study-worker", help="(internal) one worker of a shared study")
    worker.add_argument("--url", required=True)
    worker.add_argument("--worker", type=int, required=True)
    worker.add_argument("--study-name")
    for p in (study, worker):
        if p is study:
            p.add_argument("--workers", type=int, default=2)
        p.add_argument("--trials", type=int, default=3, help="trials per worker")
        p.add_argument("--family", default="lightgcn")
        p.add_argument("--max-epochs", type=int, default=3)
        p.add_argument("--world", choices=("tiny",), default="tiny")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--heartbeat", type=int, default=1, help="heartbeat interval of running trials (s)")
        p.add_argument("--grace", type=int, default=4, help="a RUNNING trial silent this long is failed (s)")
    args = parser.parse_args(argv)
    if args.command in ("study", "study-worker"):
        from .study import format_report, run_shared_study, run_worker

        common = dict(
            family=args.family,
            max_epochs=args.max_epochs,
            world=args.world,
            seed=args.seed,
            heartbeat=args.heartbeat,
            grace=args.grace,
        )
        if args.command == "study-worker":
            run_worker(args.url, args.worker, args.trials, study_name=args.study_name, **common)
            return 0
        report = run_shared_study(
            Path(args.dir),
            args.workers,
            args.trials,
            kill=not args.no_kill,
            url=args.url,
            timeout=args.timeout,
            log=lambda message: print(message, flush=True),
            **common,
        )
        print(format_report(report))
        return 0 if report.ok else 1
    if args.command == "stop":
        stopped = stop_services(Path(args.dir).resolve())
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    if args.command == "celery":
        from .celery_run import format_summary as celery_summary
        from .celery_run import run_celery_demo

        result = run_celery_demo(
            Path(args.dir),
            [c for c in args.configs.split(",") if c],
            args.timeout,
            kill=args.kill or None,
            kill_worker=args.kill_worker or None,
        )
        print(celery_summary(result))
        return 0 if result.get("success") else 1
    summary = run_demo(
        Path(args.dir),
        args.profile,
        args.max_concurrent_runs,
        [c for c in args.configs.split(",") if c] or None,
        args.timeout,
    )
    print(format_summary(summary))
    ok = summary.get("backfill_status") == "COMPLETED_SUCCESS" and summary.get("max_concurrent_runs_seen", 0) >= min(
        2, args.max_concurrent_runs, len(summary.get("partitions", []))
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
