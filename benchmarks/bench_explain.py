"""Latency of recommend + explain per user, the faithfulness test, and cold start, on a
materialized data lake (default: the one `make demo` fills).

    .venv/bin/python benchmarks/bench_explain.py [--lake PATH] [--model gat_enhanced] [--users 100]
        [--faithfulness-users 20] [--cold-start] [--cold-start-epochs 20]

Per sampled user (seeded): ``recommend`` = rank the catalogue for the user (score, mask every
known song, blend with the genre score, top-10); ``explain`` = the full explanation of the top
recommendation (one forward + backward pass of the model with edge masks on the training graph,
evidence links, attention, influences). Timings are wall-clock with 1 torch thread, after a
warm-up call; the bundle (model + graph) is loaded once, as a serving process would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotify_engine_assets.core.serving.explain import explain, faithfulness
from spotify_engine_assets.core.serving.recommend import load_bundle, rank_songs
from spotify_engine_assets.core.storage.paths import data_lake_root
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return (
        f"p50 {p(0.5) * 1000:8.1f} ms   p95 {p(0.95) * 1000:8.1f} ms   mean {statistics.fmean(values) * 1000:8.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=str(data_lake_root()))
    parser.add_argument("--model", default="gat_enhanced")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--faithfulness-users", type=int, default=20)
    parser.add_argument("--remove", type=int, default=5)
    parser.add_argument(
        "--cold-start", action="store_true", help="also retrain without held-out users and print the cold-start table"
    )
    parser.add_argument("--cold-start-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    bundle = load_bundle(Path(args.lake), DATASET, args.model)
    load_seconds = time.perf_counter() - started
    view = bundle.view
    print(
        f"lake {args.lake}; model {args.model}; users {bundle.data['user'].num_nodes}, songs {bundle.num_songs}, "
        f"training listens edges {view[LISTENS].edge_index.size(1)}; torch threads {torch.get_num_threads()}; "
        f"load {load_seconds:.2f} s"
    )
    active = torch.unique(view[LISTENS].edge_index[0])
    generator = torch.Generator().manual_seed(args.seed)
    users = active[torch.randperm(active.numel(), generator=generator)[: args.users]].tolist()

    grid = ", ".join(f"{key:g}: {value:.4f}" for key, value in bundle.n0_scores.items())
    print(
        f"adaptive genre weight w = n0/(n0+n): n0 = {bundle.n0:g} ({bundle.n0_source}; stored with the model) "
        f"over n0 = {{{grid}}}"
    )
    warm = rank_songs(bundle, args.k, user=users[0])
    explain(bundle, users[0], int(warm.songs[0]))
    rec_times, exp_times, both_times = [], [], []
    for user in users:
        t0 = time.perf_counter()
        ranking = rank_songs(bundle, args.k, user=user)
        t1 = time.perf_counter()
        explain(bundle, user, int(ranking.songs[0]))
        t2 = time.perf_counter()
        rec_times.append(t1 - t0)
        exp_times.append(t2 - t1)
        both_times.append(t2 - t0)
    print(f"\nlatency per user over {len(users)} users (k={args.k}, explain = the top recommendation):")
    print(f"  recommend           {percentiles(rec_times)}")
    print(f"  explain             {percentiles(exp_times)}")
    print(f"  recommend + explain {percentiles(both_times)}")

    pairs = []
    for user in users[: args.faithfulness_users]:
        pairs += [(user, int(song)) for song in rank_songs(bundle, 3, user=user).songs.tolist()]
    t0 = time.perf_counter()
    result = faithfulness(bundle.model, view, pairs, remove=args.remove, seed=args.seed)
    print(
        f"\nfaithfulness over {result['pairs']} (user, top-3 song) pairs, {args.remove} evidence links removed "
        f"({time.perf_counter() - t0:.1f} s):"
    )
    print(f"  mean score drop, top-attributed links removed : {result['mean_drop_top']:.4f}")
    print(
        f"  mean score drop, random evidence links removed: {result['mean_drop_random']:.4f} "
        f"(mean of {result['random_draws']} seeded draws)"
    )
    if "mean_drop_attention" in result:
        print(f"  mean score drop, highest-attention links removed: {result['mean_drop_attention']:.4f}")
    print(
        f"  top-attributed beats random on {result['top_beats_random_share']:.0%} of pairs; "
        f"mean score {sum(r['score'] for r in result['rows']) / len(result['rows']):.4f}"
    )

    if args.cold_start:
        import polars as pl

        from spotify_engine_assets.core.serving.cold_start import evaluate_cold_start
        from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch

        store = ArtifactStore(Path(args.lake) / "artifacts")
        split = load_torch(store.current(["listening", "split"]) / "data.pt")[bundle.config.split]
        config = bundle.config

        def fit(kept):
            # as the listening/cold_start_report asset: the one trainer on the kept split (best weights, prepared)
            if not config.trainable:
                return None
            return DATASET.fit(config, bundle.data, kept, max_epochs=args.cold_start_epochs)[0]

        t0 = time.perf_counter()
        cold = evaluate_cold_start(
            DATASET, bundle.data, split["train"], split["valid"], split["test"], fit, seed=args.seed
        )
        print(
            f"\ncold start ({cold['heldout_users']} users held out of training, {config.name} retrained "
            f"<= {args.cold_start_epochs} epochs without them; {cold['targets']} target interactions; "
            f"{time.perf_counter() - t0:.0f} s); revealed = -1: the other users' test songs"
        )
        with pl.Config(tbl_rows=100, tbl_width_chars=200, fmt_str_lengths=60):
            print(pl.DataFrame(cold["rows"]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
