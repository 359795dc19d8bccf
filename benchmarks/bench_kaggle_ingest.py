"""Ingestion throughput and peak memory of the Kaggle playlists loader.

Writes a Kaggle-format file of ``--rows`` rows (default 1,000,000; about 0.1% bad rows of every
kind: too many / too few fields, stray quotes, empty names, invalid UTF-8, blank lines), then
ingests it into a fresh DuckDB file in a *child process* (so its peak RSS is the loader's alone)
with the asset's settings (memory_limit 1GB). Prints rows/s, peak RSS, reject counts, checks that
every accepted row kept its own line number, and extrapolates to the 12.9M-row Kaggle file.

    .venv/bin/python benchmarks/bench_kaggle_ingest.py [--rows N] [--memory-limit 1GB]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_FILE_ROWS = 12_900_000
FULL_FILE_BYTES = 1.2e9
BAD = [b"u,a,b,c,d", b"u,a", b'u,"stray" quote,t,p', b"u,,t,p", b"u,Bad\xff\xfe,t,p", b""]


def write_file(path: Path, rows: int, seed: int = 0) -> int:
    """Kaggle-format file; good rows carry their own line number in trackname. Returns bad rows."""
    rng = random.Random(seed)
    header = b'user_id," ""artistname"""," ""trackname"""," ""playlistname"""\n'
    bad = 0
    with open(path, "wb") as out:
        out.write(header)
        lines = []
        for line in range(2, rows + 2):
            if rng.random() < 0.001:
                lines.append(BAD[bad % len(BAD)])
                bad += 1
            else:
                user = rng.randrange(20_000)
                artist = rng.randrange(50_000)
                playlist = f'"My list, {rng.randrange(10)}"' if line % 7 == 0 else f"list {rng.randrange(10)}"
                lines.append(f"{user:032x},Artist {artist},Song {line},{playlist}".encode())
            if len(lines) == 100_000:
                out.write(b"\n".join(lines) + b"\n")
                lines = []
        if lines:
            out.write(b"\n".join(lines) + b"\n")
    return bad


def child(csv: str, database: str, memory_limit: str) -> None:
    import duckdb

    from spotify_engine_assets.datasets.playlists.kaggle import ingest_playlist_csv, limit_memory

    con = duckdb.connect(database)
    limit_memory(con, memory_limit, Path(database).parent / "duckdb_tmp")
    started = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    stats = ingest_playlist_csv(con, Path(csv), "bench")
    con.execute("COMMIT")
    seconds = time.perf_counter() - started
    ((misnumbered,),) = con.sql(
        "SELECT count(*) FROM kaggle_raw.entries WHERE trackname <> 'Song ' || line::VARCHAR"
    ).fetchall()
    print(json.dumps({**stats.as_dict(), "seconds": seconds, "misnumbered": misnumbered}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--child", nargs=3, metavar=("CSV", "DB", "LIMIT"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        csv, db = Path(folder) / "spotify_dataset.csv", Path(folder) / "bench.duckdb"
        started = time.perf_counter()
        bad = write_file(csv, args.rows)
        print(
            f"wrote {args.rows:,} rows ({bad:,} bad, {csv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s"
        )
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(csv), str(db), args.memory_limit],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = json.loads(output.strip().splitlines()[-1])
    rate = result["data_lines"] / result["seconds"]
    mb_per_s = result["bytes"] / 1e6 / result["seconds"]
    print(
        f"ingested {result['data_lines']:,} lines in {result['seconds']:.1f} s: {rate:,.0f} rows/s, {mb_per_s:.1f} MB/s"
    )
    print(
        f"accepted {result['accepted']:,}, rejected {result['rejected']:,} {result['reasons']}, unaccounted {result['unaccounted']}"
    )
    print(f"rows whose line number does not match their content: {result['misnumbered']}")
    print(f"peak RSS of the ingesting process: {peak_mb:,.0f} MB (DuckDB memory_limit {args.memory_limit})")
    print(
        f"implied for the 12.9M-row, 1.2 GB Kaggle file: ~{FULL_FILE_ROWS / rate / 60:.1f} min by rows, "
        f"~{FULL_FILE_BYTES / 1e6 / mb_per_s / 60:.1f} min by bytes; memory stays capped by memory_limit (spills to disk)"
    )


if __name__ == "__main__":
    main()
