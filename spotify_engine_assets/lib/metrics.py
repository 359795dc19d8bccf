"""Top-K ranking and ranking metrics, vectorized over all users.

Scores for every (user, song) are one matrix product per chunk of users; songs a user must
not be recommended (their training songs, and for test also validation songs) are masked to
``-inf`` before :func:`torch.topk`. The metrics are :mod:`torch_geometric.metrics`
implementations (binary relevance; NDCG's ideal DCG over ``min(K, |relevant|)``), averaged over
users with at least one relevant song. Catalogue coverage is the share of songs that appear in
at least one user's top-10.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.metrics import (
    LinkPredHitRatio,
    LinkPredMetricCollection,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)


def topk_excluding(
    user_emb: Tensor,
    song_emb: Tensor,
    users: Tensor,
    exclude: Tensor,
    k: int,
    chunk_size: int = 2048,
) -> Tensor:
    """Indices of the ``k`` best songs for each of ``users``, never one of the ``exclude`` pairs.

    A user with fewer than ``k`` songs left after masking gets the sentinel ``num_songs`` in the
    remaining slots: it never matches a relevant song and is not counted as covered.

    Args:
        user_emb: ``[num_users, d]`` user embeddings.
        song_emb: ``[num_songs, d]`` song embeddings.
        users: The users to rank for (rows of the result, in this order).
        exclude: ``[2, E]`` (user, song) pairs to mask.
        k: List length; must not exceed the number of songs.
    """
    num_songs = song_emb.size(0)
    if not 0 < k <= num_songs:
        raise ValueError(f"k must be in [1, {num_songs}], got {k}")
    row_of_user = torch.full((user_emb.size(0),), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    exclude_rows = row_of_user[exclude[0]]
    keep = exclude_rows >= 0
    exclude_rows, exclude_songs = exclude_rows[keep], exclude[1][keep]
    results = []
    for start in range(0, users.numel(), chunk_size):
        stop = min(start + chunk_size, users.numel())
        scores = user_emb[users[start:stop]] @ song_emb.T
        in_chunk = (exclude_rows >= start) & (exclude_rows < stop)
        scores[exclude_rows[in_chunk] - start, exclude_songs[in_chunk]] = float("-inf")
        top = scores.topk(k, dim=1)
        results.append(top.indices.masked_fill(top.values == float("-inf"), num_songs))
    return torch.cat(results) if results else torch.empty((0, k), dtype=torch.long)


def metric_collection(num_songs: int, ks: tuple[int, ...] = (10, 20)) -> LinkPredMetricCollection:
    """The report's accuracy metrics: Recall and NDCG at each K, Precision and HitRate at 10."""
    metrics = {}
    for k in ks:
        metrics[f"recall@{k}"] = LinkPredRecall(k)
        metrics[f"ndcg@{k}"] = LinkPredNDCG(k)
    metrics["precision@10"] = LinkPredPrecision(10)
    metrics["hit_rate@10"] = LinkPredHitRatio(10)
    return LinkPredMetricCollection(metrics)


def catalog_coverage(topk: Tensor, num_songs: int, k: int = 10) -> float:
    """Share of the catalogue recommended to at least one user in the top ``k``."""
    shown = topk[:, :k]
    return torch.unique(shown[shown < num_songs]).numel() / num_songs


def ranking_metrics(
    user_emb: Tensor,
    song_emb: Tensor,
    relevant: Tensor,
    exclude: Tensor,
    ks: tuple[int, ...] = (10, 20),
) -> dict[str, float]:
    """Rank all songs for every user with a relevant pair and score the lists.

    Args:
        relevant: ``[2, E]`` held-out (user, song) pairs.
        exclude: ``[2, E']`` pairs masked from ranking (known positives).
    Returns:
        Metric name -> mean over users, plus ``users_evaluated``.
    """
    users = torch.unique(relevant[0])
    if users.numel() == 0:
        raise ValueError("no held-out interactions to evaluate")
    k_max = max(max(ks), 10)
    topk = topk_excluding(user_emb, song_emb, users, exclude, k_max)
    row_of_user = torch.full((user_emb.size(0),), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    collection = metric_collection(song_emb.size(0), ks)
    collection.update(topk, (row_of_user[relevant[0]], relevant[1]))
    values = {name: float(value) for name, value in collection.compute().items()}
    values["coverage@10"] = catalog_coverage(topk, song_emb.size(0))
    values["users_evaluated"] = int(users.numel())
    return values


def recall_at_k(user_emb: Tensor, song_emb: Tensor, relevant: Tensor, exclude: Tensor, k: int = 10) -> float:
    """Mean Recall@k alone (the early-stopping signal)."""
    users = torch.unique(relevant[0])
    topk = topk_excluding(user_emb, song_emb, users, exclude, k)
    row_of_user = torch.full((user_emb.size(0),), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    metric = LinkPredRecall(k)
    metric.update(topk, (row_of_user[relevant[0]], relevant[1]))
    return float(metric.compute())
