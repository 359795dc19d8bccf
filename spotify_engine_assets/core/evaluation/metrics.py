"""Top-K ranking and ranking metrics, vectorized over all users.

Items a user must not be recommended (their training items, and for test also validation items)
are masked to ``-inf`` before the top-K, a chunk of users at a time. The accuracy metrics are
:mod:`torch_geometric.metrics` implementations (binary relevance; NDCG's ideal DCG over
``min(K, |relevant|)``), averaged over users with at least one relevant item.

Beyond-accuracy metrics work on the ``[users, K]`` top-K matrix (the sentinel ``num_items`` marks
an empty slot and is never counted):

* :func:`gini` of the *whole* catalogue's recommendation counts (never recommended items are zeros).
* :func:`novelty_per_user`: ``p(item)`` is Laplace-smoothed, ``(listeners + 1) / (users + 1)``, so
  unplayed items are finite.
* :func:`intra_list_distance`: mean pairwise cosine distance (the serving re-rankers' ILD,
  :func:`~spotify_engine_assets.core.serving.diversity.mean_pairwise_distance`).
* :func:`personalization`: exact for all pairs from item recommendation counts,
  ``sum_{u != v} |L_u ∩ L_v| = sum_i c_i^2 - sum_u |L_u|``.
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

from ..serving.diversity import mean_pairwise_distance

ACCURACY_KS = (5, 10, 20)
ACCURACY_FAMILIES = {
    "recall": LinkPredRecall,
    "precision": LinkPredPrecision,
    "ndcg": LinkPredNDCG,
    "mrr": LinkPredMRR,
    "hit_rate": LinkPredHitRatio,
}


SCORE_CHUNK_ELEMENTS = 4 * 2**20  # 16 MiB of float scores: below glibc's 32 MiB mmap threshold, so reused


def chunk_users(chunk_size: int, num_items: int) -> int:
    """Users per scoring chunk: at most ``chunk_size``, and at most :data:`SCORE_CHUNK_ELEMENTS`
    scores a chunk, so a large catalogue's score buffers come from the heap and are reused instead
    of being mapped and page-faulted anew for every chunk (the chunking never changes a result)."""
    return max(1, min(chunk_size, SCORE_CHUNK_ELEMENTS // max(num_items, 1)))


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
    chunk at a time (:func:`chunk_users`), so the full user x item matrix never exists. A user with fewer than ``k``
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
    chunk_size = chunk_users(chunk_size, num_items)
    for start in range(0, users.numel(), chunk_size):
        stop = min(start + chunk_size, users.numel())
        scores = score_fn(users[start:stop]).float()
        if scores.shape != (stop - start, num_items):
            raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected {(stop - start, num_items)}")
        scores = scores.clone()  # never mask the caller's tensor in place
        in_chunk = (exclude_rows >= start) & (exclude_rows < stop)
        masked = (exclude_rows[in_chunk] - start).to(scores.device), exclude_items[in_chunk].to(scores.device)
        scores[masked] = float("-inf")
        if stable:
            order = torch.sort(scores, dim=1, descending=True, stable=True)
            values, indices = order.values[:, :k], order.indices[:, :k]
        else:
            values, indices = scores.topk(k, dim=1)
        results.append(indices.masked_fill(values == float("-inf"), num_items).cpu())  # scores may live on a GPU
    return torch.cat(results)


def metric_collection(num_items: int, ks: tuple[int, ...] = (10, 20)) -> LinkPredMetricCollection:
    """The report's accuracy metrics: Recall and NDCG at each K, Precision and HitRate at 10."""
    families = (("recall", LinkPredRecall), ("ndcg", LinkPredNDCG))
    metrics = {f"{name}@{k}": metric(k) for k in ks for name, metric in families}
    metrics["precision@10"] = LinkPredPrecision(10)
    metrics["hit_rate@10"] = LinkPredHitRatio(10)
    return LinkPredMetricCollection(metrics)


def catalog_coverage(topk: Tensor, num_items: int, k: int = 10) -> float:
    """Share of the catalogue recommended to at least one user in the top ``k``."""
    shown = topk[:, :k]
    return torch.unique(shown[shown < num_items]).numel() / num_items


def link_prediction_metrics(
    score_fn: Callable[[Tensor], Tensor],
    relevant: Tensor,
    exclude: Tensor,
    num_items: int,
    ks: tuple[int, ...] = (10, 20),
    *,
    users: Tensor | None = None,
    stable: bool = False,
    chunk_size: int = 2048,
    coverage_k: int = 10,
    clip: bool = False,
) -> dict[str, float]:
    """Rank every item for each user with a relevant pair (restricted to ``users`` when given),
    masking ``exclude``, and score the lists: Recall and NDCG at each K, Precision and HitRate at
    10 (PyG's metrics), coverage at ``coverage_k`` and ``users_evaluated``. A K above the catalogue
    size is an error unless ``clip`` (lists of the whole masked catalogue).

    Args:
        relevant: ``[2, E]`` held-out (user, item) pairs.
        exclude: ``[2, E']`` pairs masked from ranking (known positives).
    """
    evaluated = torch.unique(relevant[0])
    if users is not None:
        evaluated = evaluated[torch.isin(evaluated, users)]
        relevant = relevant[:, torch.isin(relevant[0], evaluated)]
    if evaluated.numel() == 0:
        raise ValueError("no held-out interactions to evaluate")
    k = max(*ks, coverage_k)
    topk = topk_scored(score_fn, evaluated, exclude, num_items, min(k, num_items) if clip else k, chunk_size, stable)
    row_of_user = torch.full((int(max(evaluated.max(), relevant[0].max())) + 1,), -1, dtype=torch.long)
    row_of_user[evaluated] = torch.arange(evaluated.numel())
    collection = metric_collection(num_items, tuple(ks))
    collection.update(topk, (row_of_user[relevant[0]], relevant[1]))
    values = {name: float(value) for name, value in collection.compute().items()}
    values[f"coverage@{coverage_k}"] = catalog_coverage(topk, num_items, k=coverage_k)
    values["users_evaluated"] = int(evaluated.numel())
    return values


def ranking_metrics(
    user_emb: Tensor, item_emb: Tensor, relevant: Tensor, exclude: Tensor, ks: tuple[int, ...] = (10, 20)
) -> dict[str, float]:
    """:func:`link_prediction_metrics` of dot-product scores of ``[num_users, d]`` user and
    ``[num_items, d]`` item embeddings."""
    return link_prediction_metrics(lambda chunk: user_emb[chunk] @ item_emb.T, relevant, exclude, item_emb.size(0), ks)


# ---------------------------------------------------------------------------------- per user


def accuracy_per_user(
    topk: Tensor, rows: Tensor, items: Tensor, ks: tuple[int, ...] = ACCURACY_KS
) -> dict[str, Tensor]:
    """Recall, Precision, NDCG, MRR and HitRate at each ``k``, one value per row of ``topk``.

    The values are PyG's own per-example computations (``LinkPredMetric._compute``) on one shared
    relevance matrix; their mean over rows with a relevant item is what the PyG metric's
    ``compute()`` returns.

    Args:
        topk: ``[num_rows, >= max(ks)]`` recommended item indices (sentinel ``num_items`` allowed).
        rows, items: the relevant pairs, as row indices into ``topk`` and item indices.
    """
    if topk.size(1) < max(ks):
        raise ValueError(f"top-K lists have {topk.size(1)} columns, metrics need {max(ks)}")
    data = LinkPredMetricData(pred_index_mat=topk, edge_label_index=(rows, items))
    values = {}
    for k in ks:
        for family, metric_class in ACCURACY_FAMILIES.items():
            values[f"{family}@{k}"] = metric_class(k)._compute(data).double()
    return values


def recommendation_counts(topk: Tensor, num_items: int, k: int) -> Tensor:
    """How many users have each item of the catalogue in their top ``k`` (zeros included)."""
    shown = topk[:, :k].reshape(-1)
    return torch.bincount(shown[shown < num_items], minlength=num_items)


def gini(counts: Tensor) -> float:
    """Gini coefficient of non-negative counts (0: all equal; ``1 - 1/n``: one item has all)."""
    values = torch.sort(counts.double().flatten()).values
    n, total = values.numel(), float(values.sum())
    if n == 0 or total == 0.0:
        return 0.0
    rank = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * rank - n - 1) * values).sum() / (n * total))


def popularity_probability(train_pairs: Tensor, num_users: int, num_items: int) -> Tensor:
    """Laplace-smoothed share of users who played each item in training."""
    listeners = torch.bincount(train_pairs[1], minlength=num_items).double()
    return (listeners + 1.0) / (num_users + 1.0)


def _padded(values: Tensor, fill: float = 0.0) -> Tensor:
    """Append one row/entry for the sentinel index ``num_items``."""
    pad = torch.full((1, *values.shape[1:]), fill, dtype=values.dtype)
    return torch.cat([values, pad])


def novelty_per_user(topk: Tensor, probability: Tensor, k: int) -> Tensor:
    """Mean self-information ``-log2 p`` of each list's items (empty slots skipped)."""
    top = topk[:, :k]
    valid = top < probability.numel()
    information = _padded(-torch.log2(probability.double()))[top]
    count = valid.sum(dim=1)
    return torch.where(count > 0, (information * valid).sum(dim=1) / count.clamp(min=1), torch.zeros(()).double())


def intra_list_distance(topk: Tensor, features: Tensor, k: int) -> Tensor:
    """Mean pairwise cosine distance within each top-``k`` list under ``features`` (one row per item).

    Lists with fewer than two items get 0. A zero feature vector is at distance 1 from everything.
    The mean is :func:`~spotify_engine_assets.core.serving.diversity.mean_pairwise_distance`, the
    ILD the serving re-rankers are measured with.
    """
    top = topk[:, :k]
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    vectors = _padded(unit)[top]  # [users, k, d]; the sentinel row is zero
    return mean_pairwise_distance(torch.bmm(vectors, vectors.transpose(1, 2)), top < features.size(0))


def personalization(topk: Tensor, num_items: int, k: int) -> float:
    """``1 -`` mean over all pairs of users of ``|L_u ∩ L_v| / k`` (exact; no pair enumeration)."""
    n = topk.size(0)
    if n < 2:
        return 0.0
    counts = recommendation_counts(topk, num_items, k).double()
    shown = float((topk[:, :k] < num_items).sum())
    overlap = (float(counts.pow(2).sum()) - shown) / (n * (n - 1))
    return 1.0 - overlap / k


def group_of_rank(values: Tensor, groups: int = 3) -> Tensor:
    """Equal-size groups by rank of ``values`` (ties broken by position): 0 = lowest."""
    order = torch.sort(values, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return (rank * groups) // max(order.numel(), 1)
