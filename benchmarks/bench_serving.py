"""Wall time of the serving commands as cold processes, the way a user runs them.

    .venv/bin/python benchmarks/bench_serving.py [--lake PATH] [--model gat_enhanced] [--user ID] [--song ID]
        [--repeats 5] [--k 10]

Each command is started ``--repeats`` times as a new process (``python -m spotify_engine_assets.cli``,
what the ``spotify-engine`` script runs), one after the other, and its wall time is measured from
start to exit: imports, loading the model and printing included. Printed: p50 and p95 (linear
interpolation) per command, against the targets of issue 15 (recommend <= 3 s, explain of one song
<= 5 s, recommend --explain --k 10 <= 10 s), and the load average before and after (the figures
hold for a quiet machine). ``--user`` defaults to the first user of the model's serving index with
training interactions, ``--song`` to that user's top recommendation (found by one untimed call).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"recommend": 3.0, "explain": 5.0, "recommend --explain": 10.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cli(args: list[str], env: dict) -> tuple[float, str]:
    """Run ``spotify-engine ARGS`` in a new process; (wall seconds, stdout). Fails loudly on a non-zero exit."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "spotify_engine_assets.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"spotify-engine {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return seconds, done.stdout


def default_user(lake: Path, model: str) -> str:
    """The first user with training interactions, read from the trained model's serving index."""
    import torch

    slot = lake / "artifacts" / "listening" / "trained_model" / model
    artifact = torch.load(slot / (slot / "CURRENT").read_text().strip() / "data.pt", weights_only=True)
    serving = artifact.get("serving")
    if serving is None:  # an artifact from before serving indices: the first user of the graph
        graph_slot = lake / "artifacts" / "listening" / "graph" / "_"
        graph = torch.load(graph_slot / (graph_slot / "CURRENT").read_text().strip() / "data.pt", weights_only=True)
        return str(int(graph["user"]["node_id"][0]))
    counts = serving["train_indptr"][1:] - serving["train_indptr"][:-1]
    return str(int(serving["user_ids"][int((counts > 0).nonzero()[0])]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", help="data lake (default $SPOTIFY_ENGINE_DATA_LAKE or the repository's data_lake/)")
    parser.add_argument("--model", default="gat_enhanced")
    parser.add_argument("--user", help="warehouse user id (default: see above)")
    parser.add_argument("--song", help="warehouse song id to explain (default: the user's top recommendation)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=10, help="list length of recommend and recommend --explain")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.lake:
        env["SPOTIFY_ENGINE_DATA_LAKE"] = str(Path(args.lake).resolve())
    sys.path.insert(0, str(ROOT))
    from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV, data_lake_root

    os.environ.update({DATA_LAKE_ENV: env[DATA_LAKE_ENV]} if DATA_LAKE_ENV in env else {})
    lake = data_lake_root()
    user = args.user or default_user(lake, args.model)
    _, out = cli(
        ["recommend", "--model", args.model, "--user", user, "--k", "1", "--json"], env
    )  # untimed: warms the file cache
    song = args.song or str(json.loads(out)["recommendations"][0]["song_id"])
    base = ["--model", args.model, "--user", user]
    commands = {
        "recommend": ["recommend", *base, "--k", str(args.k)],
        "explain": ["explain", *base, "--song", song],
        "recommend --explain": ["recommend", *base, "--k", str(args.k), "--explain"],
    }
    load_before = os.getloadavg()
    print(
        f"lake {lake}; model {args.model}; user {user}; song {song}; {args.repeats} cold processes per command; "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    rows = []
    for name, argv in commands.items():
        seconds = [cli(argv, env)[0] for _ in range(args.repeats)]
        p50, p95 = percentile(seconds, 0.5), percentile(seconds, 0.95)
        rows.append((name, p50, p95, TARGETS[name], " ".join(["spotify-engine", *argv])))
        print(f"  {name:<20} " + " ".join(f"{s:5.2f}" for s in seconds), flush=True)
    load_after = os.getloadavg()
    print("\n| command | p50 s | p95 s | target s | within |\n|---|---|---|---|---|")
    for name, p50, p95, target, _ in rows:
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {target:g} | {'yes' if p50 <= target else 'NO'} |")
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for name, *_, command in rows:
        print(f"  {name}: {command}")
    return 0 if all(p50 <= target for _, p50, _, target, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
