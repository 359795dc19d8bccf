"""Accuracy cost and diversity gain of the serving re-rankers (core/serving/diversity.py).

    .venv/bin/python benchmarks/bench_diversity.py [--config lightgcn] [--max-epochs N] [--k 10]
        [--world default|tiny]

Dagster-free, on the default synthetic listening world (or the tiny CI world): the same world,
graph and random 70/15/15 split as the asset chain, the registry config fitted with the library
harness (``DATASET.fit``; ``--max-epochs`` caps a graph model's epochs, a closed-form config such as
``most_popular`` or ``ease`` fits in seconds). Every user with a test item is ranked as the
``listening/metric_report`` asset ranks (the model's scores, training and validation songs masked,
test songs scored); the pool of the best ``max(50, 5k)`` songs is then re-ranked by each of: no
re-rank, artist cap 1/2/3, MMR λ 0.1/0.3/0.5 (``rerank_scores``, as serving re-ranks). Per re-ranker, means over users at ``k``: NDCG and
Recall (PyG's per-user metrics, as the report), ILD (1 - the artist+genre similarity the re-rankers
use), the report's genre ILD (``ild_genre``), distinct artists, and the most songs of one artist in
a list; then the relative change of NDCG@k and of ILD@k against no re-rank. torch runs on 1 thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotify_engine_assets.core.data.graph import category_features
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.evaluation.metrics import accuracy_per_user, intra_list_distance
from spotify_engine_assets.core.serving.diversity import (
    Diversify,
    ItemSimilarity,
    artist_spread,
    pool_size,
    rerank_scores,
)
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, graph_from_world
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split

WORLDS = {
    "default": GeneratorSettings(),
    "tiny": GeneratorSettings(
        users=150, songs=600, artists=60, genres=10, days=14, seed=7
    ),  # configs/run/tiny_data.yaml
}
RERANKERS = (
    Diversify(),
    *(Diversify("artist-cap", max_per_artist=n) for n in (1, 2, 3)),
    *(Diversify("mmr", mmr_lambda=lam) for lam in (0.1, 0.3, 0.5)),
)
CHUNK = 256  # users scored at once


def item_similarity(data) -> ItemSimilarity:
    """Each song's artist (-1: none) and genres, from the graph's item-category relations."""
    artists, genres = category_features(data, SCHEMA, "artist"), category_features(data, SCHEMA, "genre")
    artist = torch.where(artists.sum(1) > 0, artists.argmax(1), torch.full((artists.size(0),), -1))
    return ItemSimilarity(artist, genres)


def masked_scores(score_fn, users, exclude, num_items: int) -> torch.Tensor:
    """``[users, items]`` scores with the ``exclude`` (user, item) pairs at ``-inf``."""
    row_of_user = torch.full((max(num_items, int(users.max()) + 1, int(exclude[0].max()) + 1),), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    rows, items = row_of_user[exclude[0]], exclude[1]
    keep = rows >= 0
    with torch.no_grad():
        scores = torch.cat([score_fn(users[start : start + CHUNK]).float() for start in range(0, users.numel(), CHUNK)])
    scores[rows[keep], items[keep]] = float("-inf")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="lightgcn", help="registry config (configs/listening/models.yaml)")
    parser.add_argument("--max-epochs", type=int, help="cap a graph model's epochs (default: the config's)")
    parser.add_argument("--k", type=int, default=10, help="list length (default 10)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()

    data = graph_from_world(generate_world(WORLDS[args.world]))
    split = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    config = DATASET.registry.get(args.config, DATASET.registry.base)
    model, result, _ = DATASET.fit(config, data, split, max_epochs=args.max_epochs)
    if isinstance(model, torch.nn.Module):
        model.eval()
    fitted = time.perf_counter() - started
    print(
        f"world {args.world}: {data['user'].num_nodes} users, {data['song'].num_nodes} songs, "
        f"{data['artist'].num_nodes} artists; {config.name} ({config.model}) fitted in {fitted:.0f} s "
        f"({result.epochs_run} epochs)",
        flush=True,
    )

    evaluation = DATASET.evaluation_data(data, split, config)  # the metric report's pairs and features
    users = torch.unique(evaluation.test[0])
    if evaluation.users is not None:
        users = users[torch.isin(users, evaluation.users)]
    num_items, k = evaluation.num_items, args.k
    test = evaluation.test[:, torch.isin(evaluation.test[0], users)]
    row_of_user = torch.full((evaluation.num_users,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    rows, relevant = row_of_user[test[0]], test[1]
    similarity = item_similarity(data)
    genres = evaluation.categories["genre"]
    scores = masked_scores(model.score, users, evaluation.test_exclude, num_items)

    results = []
    for option in RERANKERS:
        began = time.perf_counter()
        items, ok = rerank_scores(scores, k, option, similarity)
        seconds = time.perf_counter() - began
        topk = items.masked_fill(~ok, num_items)  # an empty slot: the sentinel
        accuracy = accuracy_per_user(topk, rows, relevant, (k,))
        distinct, most = artist_spread(topk, similarity.artist, k)
        results.append(
            {
                "re-ranker": option.label(),
                f"ndcg@{k}": float(accuracy[f"ndcg@{k}"].mean()),
                f"recall@{k}": float(accuracy[f"recall@{k}"].mean()),
                f"ild@{k}": float(similarity.intra_list_distance(topk, k).mean()),
                f"ild_genre@{k}": float(intra_list_distance(topk, genres, k).mean()),
                "artists": float(distinct.double().mean()),
                "max_artist": float(most.double().mean()),
                "max_artist_worst": int(most.max()),
                "full_lists": float(ok.all(1).double().mean()),
                "ms": 1000 * seconds,
            }
        )

    base = results[0]
    columns = [f"ndcg@{k}", f"recall@{k}", f"ild@{k}", f"ild_genre@{k}", "artists", "max_artist"]
    print(
        f"\n{users.numel()} users with test songs; k = {k}; pool = {pool_size(k)}; ILD similarity = "
        "0.5 [same artist] + 0.5 cos(genre sets) (core/serving/diversity.py)\n"
    )
    print(
        f"| re-ranker | NDCG@{k} | Recall@{k} | ILD@{k} | genre ILD@{k} | distinct artists@{k} | max of one artist@{k} "
        f"(worst) | ΔNDCG@{k} | ΔILD@{k} | full lists | top-k + re-rank ms |"
    )
    print("|---|" + "---|" * 11)
    for row in results:
        cells = [f"{row[c]:.4f}" if c.startswith(("ndcg", "recall", "ild")) else f"{row[c]:.2f}" for c in columns]
        cells[-1] += f" ({row['max_artist_worst']})"
        change = [100 * (row[f"ndcg@{k}"] / base[f"ndcg@{k}"] - 1), 100 * (row[f"ild@{k}"] / base[f"ild@{k}"] - 1)]
        print(
            f"| {row['re-ranker']} | " + " | ".join(cells) + f" | {change[0]:+.1f} % | {change[1]:+.1f} % | "
            f"{100 * row['full_lists']:.1f} % | {row['ms']:.0f} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
