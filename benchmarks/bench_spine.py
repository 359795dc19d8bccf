"""The spine's figures: the whole default chain (wall time, per-asset times) and the metric table
with the quality targets checked.

    .venv/bin/python benchmarks/bench_spine.py [--lake DIR]

Runs into a fresh temporary data lake (or ``--lake``) with an ephemeral Dagster instance, so it
never touches ``data_lake/``. Targets (issue "platform spine"): chain <= 600 s on 2 cores;
enhanced GAT test NDCG@10 >= 1.3 x most-popular and >= LightGCN.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from spotify_engine_assets.core.plots import frame_markdown
from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", help="data lake folder (default: a new temporary folder)")
    args = parser.parse_args()
    lake = Path(args.lake or tempfile.mkdtemp(prefix="spine_bench_"))
    os.environ[DATA_LAKE_ENV] = str(lake)

    from spotify_engine_assets.runner import materialize_chain

    started = time.perf_counter()
    results = materialize_chain("default", instance=dg.DagsterInstance.ephemeral(), log=print)
    total = time.perf_counter() - started

    print(f"\nwhole default chain: {total:.1f} s (target <= 600 s) -> {'OK' if total <= 600 else 'MISSED'}")
    print("\nper-asset step times (s):")
    for result in results:
        for step, seconds in sorted(result.step_seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {result.name:<20} {step:<58} {seconds:8.2f}")
    if not all(r.success for r in results):
        for r in results:
            if not r.success:
                print(f"FAILED {r.name}: {r.error}")
    table = pl.read_csv(lake / "reports" / "listening" / "model_comparison.csv")
    print("\ntest metrics, default synthetic data:")
    print(frame_markdown(table))
    ndcg = dict(zip(table["config"], table["ndcg@10"]))
    popular = float(table.filter(pl.col("config") == "gat_enhanced")["most_popular ndcg@10"][0])
    ratio = ndcg["gat_enhanced"] / popular
    print(
        f"\ngat_enhanced NDCG@10 {ndcg['gat_enhanced']:.4f} = {ratio:.2f} x most-popular ({popular:.4f}); target >= 1.3 -> "
        f"{'OK' if ratio >= 1.3 else 'MISSED'}"
    )
    print(
        f"gat_enhanced vs lightgcn: {ndcg['gat_enhanced']:.4f} vs {ndcg['lightgcn']:.4f} -> "
        f"{'OK' if ndcg['gat_enhanced'] >= ndcg['lightgcn'] else 'MISSED'}"
    )
    print(f"(data lake: {lake})")
    return 0 if all(r.success for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
