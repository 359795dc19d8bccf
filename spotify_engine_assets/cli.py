"""The ``spotify-engine`` command line."""

import argparse
import sys

import polars as pl


def _print_summary(results) -> None:
    from .lib.paths import data_lake_root

    print("\nPer-run and per-asset times (seconds):")
    for result in results:
        print(f"  {result.name:<22} {result.seconds:7.1f}  {'ok' if result.success else 'FAILED'}")
        for step, seconds in sorted(result.step_seconds.items(), key=lambda kv: -kv[1]):
            print(f"      {step:<40} {seconds:7.2f}")
    report = data_lake_root() / "reports" / "model_comparison.csv"
    if report.exists():
        from .lib.plots import frame_markdown

        frame = pl.read_csv(report)
        columns = ["config", "split", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10",
                   "hit_rate@10", "coverage@10", "ndcg@10 / most_popular", "gate", "train_seconds", "epochs"]
        print("\nMetric reports (test split):")
        print(frame_markdown(frame.select([c for c in columns if c in frame.columns])))
        print(f"(also in {report})")


def _materialize(args: argparse.Namespace) -> int:
    from .runner import materialize_chain

    configs = args.configs.split(",") if args.configs else None
    try:
        results = materialize_chain(args.profile, configs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(results)
    failed = [r.name for r in results if not r.success]
    if failed:
        print(f"\nfailed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _home(args: argparse.Namespace) -> int:
    from .runner import dagster_home

    print(dagster_home())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotify-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser("materialize", help="materialize the whole chain (data, every model config, comparison)")
    materialize.add_argument("--profile", default="default", help="run-config profile: default or tiny")
    materialize.add_argument("--configs", help="comma-separated model configs (default: all in the registry)")
    materialize.set_defaults(handler=_materialize)
    demo = commands.add_parser("demo", help="materialize the default chain on generated data and print the summary")
    demo.set_defaults(handler=_materialize, profile="default", configs=None)
    home = commands.add_parser("home", help="create the Dagster home under the data lake and print its path")
    home.set_defaults(handler=_home)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
