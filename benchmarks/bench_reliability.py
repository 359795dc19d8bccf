"""The landing sensor under load, and how long a warehouse writer waits for another's lock.

Run with ``.venv/bin/python benchmarks/bench_reliability.py [--files 1000 5000]``; prints, per
number of small Kaggle-format files landed at once, the seconds of the three sensor ticks (first
sight: every file waits for a stable size; second: every file is hashed and requested; third:
nothing new) and the requests made; then, for a write lock held 1 s by another process, the
seconds a ``Warehouse.connect()`` waited and a read-only reader's answer with ``lock_timeout_s=0``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from spotify_engine_assets.defs.resources import DataLake, Warehouse, WarehouseBusyError
from spotify_engine_assets.defs.playlists.sensors import landing_sensor
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER

HOLD = "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(1.0)"


def sensor_ticks(files: int) -> tuple[list[float], int]:
    """Seconds of three ticks over ``files`` landed files, and the run requests made."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "landing").mkdir()
        for i in range(files):
            (root / "landing" / f"batch{i:05d}.csv").write_text(f"{KAGGLE_HEADER}\nuser{i},Artist {i % 7},Song {i},mix\n")
        instance = dg.DagsterInstance.ephemeral()
        cursor, seconds, requests = None, [], 0
        for _ in range(3):
            started = time.perf_counter()
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": DataLake(root=str(root))})
            result = landing_sensor(context)
            seconds.append(time.perf_counter() - started)
            cursor = result.cursor
            requests += len(result.run_requests or [])
        return seconds, requests


def lock_wait() -> tuple[float, str]:
    """Seconds a writer waited for a 1 s lock held by another process; a reader's answer."""
    with tempfile.TemporaryDirectory() as folder:
        lake = DataLake(root=folder)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lake.warehouse_path)], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        try:
            Warehouse(lake=lake, lock_timeout_s=0).read_table("main.t")
            answer = "data"
        except WarehouseBusyError as error:
            answer = str(error).split(";")[0][:90] + "..."
        started = time.perf_counter()
        with Warehouse(lake=lake, lock_timeout_s=30).connect():
            waited = time.perf_counter() - started
        holder.wait()
        return waited, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    print(f"{'files':>6} {'tick 1 s':>9} {'tick 2 s':>9} {'tick 3 s':>9} {'requests':>9}")
    for files in args.files:
        seconds, requests = sensor_ticks(files)
        print(f"{files:>6} " + " ".join(f"{s:>9.2f}" for s in seconds) + f" {requests:>9}")
    waited, answer = lock_wait()
    print(f"writer waited {waited:.2f} s for a 1 s lock held by another process")
    print(f"reader during the write (lock_timeout_s=0): {answer}")


if __name__ == "__main__":
    main()
