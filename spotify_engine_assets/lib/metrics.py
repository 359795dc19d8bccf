"""Top-K ranking and ranking metrics, vectorized over all users.

Scores for every (user, song) are one matrix product per chunk of users; songs a user must
not be recommended (their training songs, and for test also validation songs) are masked to
``-inf`` before :func:`torch.topk`. The accuracy metrics are :mod:`torch_geometric.metrics`
implementations (binary relevance; NDCG's ideal DCG over ``min(K, |relevant|)``), averaged over
users with at least one relevant song; :func:`accuracy_per_user` returns PyG's per-user values
before averaging. Catalogue coverage is the share of songs that appear in at least one user's
top-K.

Beyond-accuracy metrics, all vectorized over the ``[users, K]`` top-K matrix (the sentinel
``num_songs`` marks an empty slot and is never counted):

* :func:`gini` of how often each song of the *whole* catalogue is recommended (never
  recommended songs count as zeros): 0 = every song equally often, near 1 = a few songs only.
* :func:`novelty_per_user`: mean ``-log2 p(song)`` of a list, ``p`` = share of users who played the
  song in training, Laplace-smoothed ``(listeners + 1) / (users + 1)`` so unplayed songs are finite.
* :func:`intra_list_distance`: mean pairwise cosine distance of a list's items under any item
  features (model embeddings, or multi-hot genre vectors), via ``||sum e||^2 - sum ||e||^2``.
* :func:`personalization`: ``1 -`` mean over user pairs of ``|L_u ∩ L_v| / K``, exact for all pairs
  from item recommendation counts: ``sum_{u != v} |L_u ∩ L_v| = sum_i c_i^2 - sum_u |L_u|``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.metrics import (
    LinkPredHitRatio,
    LinkPredMetricCollection,
    LinkPredMRR,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)
from torch_geometric.metrics.link_pred import LinkPredMetricData

ACCURACY_KS = (5, 10, 20)
ACCURACY_FAMILIES = {
    "recall": LinkPredRecall,
    "precision": LinkPredPrecision,
    "ndcg": LinkPredNDCG,
    "mrr": LinkPredMRR,
    "hit_rate": LinkPredHitRatio,
}


def topk_scored(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor,
    exclude: Tensor,
    num_items: int,
    k: int,
    chunk_size: int = 2048,
    stable: bool = False,
) -> Tensor:
    """Indices of the ``k`` best items for each of ``users``, never one of the ``exclude`` pairs.

    ``score_fn(chunk_of_users)`` returns ``[len(chunk), num_items]`` scores; users are scored a
    chunk at a time, so the full user x item matrix never exists. A user with fewer than ``k``
    items left after masking gets the sentinel ``num_items`` in the remaining slots: it never
    matches a relevant item and is not counted as covered.

    Args:
        users: The users to rank for (rows of the result, in this order).
        exclude: ``[2, E]`` (user, item) pairs to mask.
        k: List length; must not exceed the number of items.
        stable: Break ties toward the lower item index (a stable descending sort) instead of
            :func:`torch.topk`'s unspecified order; needed to reproduce published protocols.
    """
    if not 0 < k <= num_items:
        raise ValueError(f"k must be in [1, {num_items}], got {k}")
    if users.numel() == 0:
        return torch.empty((0, k), dtype=torch.long)
    size = int(users.max()) + 1 if exclude.numel() == 0 else int(max(users.max(), exclude[0].max())) + 1
    row_of_user = torch.full((size,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    exclude_rows = row_of_user[exclude[0]]
    keep = exclude_rows >= 0
    exclude_rows, exclude_items = exclude_rows[keep], exclude[1][keep]
    results = []
    for start in range(0, users.numel(), chunk_size):
        stop = min(start + chunk_size, users.numel())
        scores = score_fn(users[start:stop]).float()
        if scores.shape != (stop - start, num_items):
            raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected {(stop - start, num_items)}")
        scores = scores.clone()  # never mask the caller's tensor in place
        in_chunk = (exclude_rows >= start) & (exclude_rows < stop)
        scores[exclude_rows[in_chunk] - start, exclude_items[in_chunk]] = float("-inf")
        if stable:
            order = torch.sort(scores, dim=1, descending=True, stable=True)
            values, indices = order.values[:, :k], order.indices[:, :k]
        else:
            values, indices = scores.topk(k, dim=1)
        results.append(indices.masked_fill(values == float("-inf"), num_items))
    return torch.cat(results)


def topk_excluding(
    user_emb: Tensor,
    song_emb: Tensor,
    users: Tensor,
    exclude: Tensor,
    k: int,
    chunk_size: int = 2048,
) -> Tensor:
    """:func:`topk_scored` with dot-product scores of ``[num_users, d]`` user and ``[num_songs, d]``
    song embeddings."""
    return topk_scored(lambda chunk: user_emb[chunk] @ song_emb.T, users, exclude, song_emb.size(0), k, chunk_size)


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


# ---------------------------------------------------------------------------------- per user


def accuracy_per_user(topk: Tensor, rows: Tensor, songs: Tensor, ks: tuple[int, ...] = ACCURACY_KS) -> dict[str, Tensor]:
    """Recall, Precision, NDCG, MRR and HitRate at each ``k``, one value per row of ``topk``.

    The values are PyG's own per-example computations (``LinkPredMetric._compute``) on one shared
    relevance matrix; their mean over rows with a relevant song is what the PyG metric's
    ``compute()`` returns.

    Args:
        topk: ``[num_rows, >= max(ks)]`` recommended song indices (sentinel ``num_songs`` allowed).
        rows, songs: the relevant pairs, as row indices into ``topk`` and song indices.
    """
    if topk.size(1) < max(ks):
        raise ValueError(f"top-K lists have {topk.size(1)} columns, metrics need {max(ks)}")
    data = LinkPredMetricData(pred_index_mat=topk, edge_label_index=(rows, songs))
    values = {}
    for k in ks:
        for family, metric_class in ACCURACY_FAMILIES.items():
            values[f"{family}@{k}"] = metric_class(k)._compute(data).double()
    return values


def recommendation_counts(topk: Tensor, num_songs: int, k: int) -> Tensor:
    """How many users have each song of the catalogue in their top ``k`` (zeros included)."""
    shown = topk[:, :k].reshape(-1)
    return torch.bincount(shown[shown < num_songs], minlength=num_songs)


def gini(counts: Tensor) -> float:
    """Gini coefficient of non-negative counts (0: all equal; ``1 - 1/n``: one item has all)."""
    values = torch.sort(counts.double().flatten()).values
    n, total = values.numel(), float(values.sum())
    if n == 0 or total == 0.0:
        return 0.0
    rank = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * rank - n - 1) * values).sum() / (n * total))


def popularity_probability(train_pairs: Tensor, num_users: int, num_songs: int) -> Tensor:
    """Laplace-smoothed share of users who played each song in training."""
    listeners = torch.bincount(train_pairs[1], minlength=num_songs).double()
    return (listeners + 1.0) / (num_users + 1.0)


def _padded(values: Tensor, fill: float = 0.0) -> Tensor:
    """Append one row/entry for the sentinel index ``num_songs``."""
    pad = torch.full((1, *values.shape[1:]), fill, dtype=values.dtype)
    return torch.cat([values, pad])


def novelty_per_user(topk: Tensor, probability: Tensor, k: int) -> Tensor:
    """Mean self-information ``-log2 p`` of each list's songs (empty slots skipped)."""
    top = topk[:, :k]
    valid = top < probability.numel()
    information = _padded(-torch.log2(probability.double()))[top]
    count = valid.sum(dim=1)
    return torch.where(count > 0, (information * valid).sum(dim=1) / count.clamp(min=1), torch.zeros(()).double())


def intra_list_distance(topk: Tensor, features: Tensor, k: int) -> Tensor:
    """Mean pairwise cosine distance within each top-``k`` list under ``features`` (one row per song).

    Lists with fewer than two songs get 0. A zero feature vector is at distance 1 from everything.
    """
    top = topk[:, :k]
    num_songs = features.size(0)
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    vectors = _padded(unit)[top]  # [users, k, d]; the sentinel row is zero
    valid = (top < num_songs).sum(dim=1).double()
    squared_norms = vectors.pow(2).sum(dim=(1, 2))  # 1 per nonzero item
    summed = vectors.sum(dim=1).pow(2).sum(dim=1)
    pairs = valid * (valid - 1)
    similarity = (summed - squared_norms) / pairs.clamp(min=1)
    return torch.where(pairs > 0, 1.0 - similarity, torch.zeros(()).double())


def personalization(topk: Tensor, num_songs: int, k: int) -> float:
    """``1 -`` mean over all pairs of users of ``|L_u ∩ L_v| / k`` (exact; no pair enumeration)."""
    n = topk.size(0)
    if n < 2:
        return 0.0
    counts = recommendation_counts(topk, num_songs, k).double()
    shown = float((topk[:, :k] < num_songs).sum())
    overlap = (float(counts.pow(2).sum()) - shown) / (n * (n - 1))
    return 1.0 - overlap / k


def group_of_rank(values: Tensor, groups: int = 3) -> Tensor:
    """Equal-size groups by rank of ``values`` (ties broken by position): 0 = lowest."""
    order = torch.sort(values, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return (rank * groups) // max(order.numel(), 1)
