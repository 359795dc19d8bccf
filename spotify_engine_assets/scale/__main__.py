"""``python -m spotify_engine_assets.scale demo|stop``: the scale-out profile (see demo.py)."""

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
    stop = sub.add_parser("stop", help="stop the services a demo in --dir left running")
    stop.add_argument("--dir", default="build/scale")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stopped = stop_services(Path(args.dir).resolve())
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    summary = run_demo(Path(args.dir), args.profile, args.max_concurrent_runs,
                       [c for c in args.configs.split(",") if c] or None, args.timeout)
    print(format_summary(summary))
    ok = summary.get("backfill_status") == "COMPLETED_SUCCESS" and summary.get("max_concurrent_runs_seen", 0) >= min(
        2, args.max_concurrent_runs, len(summary.get("partitions", [])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
