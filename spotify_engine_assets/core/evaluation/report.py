"""The comprehensive evaluation of one model on one split, for every chain: accuracy (the chain
protocol's per-user metrics), beyond-accuracy, fairness and efficiency, with the per-user metric
vectors kept so any two evaluations can be compared.

Every user with a held-out test item (in the config's user sample, if any) is scored at once: one
masked top-K per user (:meth:`Protocol.topk`, training and validation items masked), per-user
accuracy from the protocol, and beyond-accuracy from :mod:`~spotify_engine_assets.core.evaluation.metrics`
(intra-list diversity on the model's item embeddings and on each item-category role). The only
per-user Python loop is the latency measurement, which times serving one user at a time on purpose.

Fairness: every per-user metric is averaged per user type (from the chain's user segments, where it
has them) and per activity tercile (equal-size thirds of the evaluated users by their number of
*training* interactions), and the largest gap between groups is reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from .metrics import (
    catalog_coverage,
    gini,
    group_of_rank,
    intra_list_distance,
    novelty_per_user,
    personalization,
    popularity_probability,
    recommendation_counts,
)
from .protocol import Protocol

TERCILES = ("low", "mid", "high")
FAIRNESS_DIMENSIONS = ("user_type", "activity_tercile")
FAIRNESS_METRICS = ("recall@10", "ndcg@10", "hit_rate@10", "mrr@10", "r_precision", "novelty@10", "ild_genre@10")


@dataclass(frozen=True)
class EvaluationData:
    """What an evaluation needs besides the model: the split's pairs, the items' category features
    and the users' ids and types."""

    num_users: int
    num_items: int
    train: Tensor  # [2, E] (user, item) training pairs: masked, and the popularity/activity source
    valid: Tensor  # [2, E] masked in test ranking
    test: Tensor  # [2, E] held-out pairs scored
    user_ids: Tensor  # id of each user index (warehouse id, or the user's index)
    categories: dict[str, Tensor] = field(default_factory=dict)  # role -> [num_items, C] multi-hot features
    user_types: tuple[str, ...] | None = None  # type of each user index
    users: Tensor | None = None  # evaluate only these users (a config's sample)

    @property
    def test_exclude(self) -> Tensor:
        return torch.cat([self.train, self.valid], dim=1)


def user_types_of(user_ids: Tensor, segments: pl.DataFrame) -> tuple[str, ...]:
    """Each user's type from a ``(user_id, user_type)`` frame (every user must appear in it)."""
    missing = {"user_id", "user_type"} - set(segments.columns)
    if missing:
        raise ValueError(f"user segments frame lacks columns {sorted(missing)}")
    lookup = dict(zip(segments["user_id"].to_list(), segments["user_type"].to_list()))
    unknown = [int(u) for u in user_ids.tolist() if int(u) not in lookup]
    if unknown:
        raise ValueError(f"{len(unknown)} graph users have no user type, e.g. user_id {unknown[:5]}")
    return tuple(str(lookup[int(u)]) for u in user_ids.tolist())


@dataclass
class Evaluation:
    summary: dict[str, float]  # metric -> value over all evaluated users (+ users_evaluated)
    per_user: pl.DataFrame  # one row per evaluated user: ids, segments, every per-user metric
    fairness: pl.DataFrame  # dimension, group, users, metric means
    gaps: pl.DataFrame  # dimension, metric, best/worst group, gap
    topk: Tensor = field(repr=False)
    users: Tensor = field(repr=False)
    topk_seconds: float = 0.0


def evaluate(
    score_fn: Callable[[Tensor], Tensor],
    factors: tuple[Tensor, Tensor] | None,
    data: EvaluationData,
    protocol: Protocol,
) -> Evaluation:
    """Score every user with a test item; see the module docstring for the metrics."""
    users = torch.unique(data.test[0])
    if data.users is not None:
        users = users[torch.isin(users, data.users)]
    if users.numel() == 0:
        raise ValueError("no held-out test interactions to evaluate")
    test = data.test[:, torch.isin(data.test[0], users)]
    beyond_k = protocol.beyond_k
    started = time.perf_counter()
    topk = protocol.topk(score_fn, users, data.test_exclude, data.num_items, min(protocol.report_k, data.num_items))
    topk_seconds = time.perf_counter() - started
    row_of_user = torch.full((data.num_users,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())

    per_user = protocol.per_user(topk, row_of_user[test[0]], test[1], data.num_items)
    probability = popularity_probability(data.train, data.num_users, data.num_items)
    per_user[f"novelty@{beyond_k}"] = novelty_per_user(topk, probability, beyond_k)
    if factors is not None:
        per_user[f"ild_embedding@{beyond_k}"] = intra_list_distance(topk, factors[1].detach(), beyond_k)
    for role, features in data.categories.items():
        per_user[f"ild_{role}@{beyond_k}"] = intra_list_distance(topk, features, beyond_k)

    summary = {name: float(values.mean()) for name, values in per_user.items()}
    for k in sorted({int(name.split("@")[1]) for name in per_user if "@" in name} | {beyond_k}):
        if k <= topk.size(1):
            summary[f"coverage@{k}"] = catalog_coverage(topk, data.num_items, k)
    summary[f"gini@{beyond_k}"] = gini(recommendation_counts(topk, data.num_items, beyond_k))
    summary[f"personalization@{beyond_k}"] = personalization(topk, data.num_items, beyond_k)
    summary["users_evaluated"] = int(users.numel())

    activity = torch.bincount(data.train[0], minlength=data.num_users)[users]
    frame = pl.DataFrame(
        {
            "user_index": users.numpy(),
            "user_id": data.user_ids[users].numpy(),
            "user_type": [data.user_types[u] for u in users.tolist()]
            if data.user_types
            else ["unknown"] * users.numel(),
            "train_interactions": activity.numpy(),
            "activity_tercile": [TERCILES[t] for t in group_of_rank(activity).tolist()],
            "test_items": torch.bincount(row_of_user[test[0]], minlength=users.numel()).numpy(),
            **{name: values.numpy() for name, values in per_user.items()},
        }
    )
    metrics = [m for m in dict.fromkeys((protocol.primary, *FAIRNESS_METRICS)) if m in frame.columns]
    return Evaluation(summary, frame, *fairness_tables(frame, metrics), topk, users, topk_seconds)


def fairness_tables(per_user: pl.DataFrame, metrics: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Group means per fairness dimension and, per (dimension, metric), the largest gap."""
    groups, rows = [], []
    for dimension in FAIRNESS_DIMENSIONS:
        part = (
            per_user.group_by(dimension)
            .agg(pl.len().alias("users"), *[pl.col(m).mean() for m in metrics])
            .rename({dimension: "group"})
            .with_columns(pl.lit(dimension).alias("dimension"), pl.col("group").cast(pl.String))
            .sort("group")
            .select("dimension", "group", "users", *metrics)
        )
        groups.append(part)
        for metric in metrics:
            ordered = part.sort(metric)
            worst, best = ordered.row(0, named=True), ordered.row(-1, named=True)
            gap = float(best[metric] - worst[metric])
            rows.append(
                {
                    "dimension": dimension,
                    "metric": metric,
                    "best_group": best["group"],
                    "best": float(best[metric]),
                    "worst_group": worst["group"],
                    "worst": float(worst[metric]),
                    "gap": gap,
                    "relative_gap": gap / best[metric] if best[metric] > 0 else 0.0,
                }
            )
    return pl.concat(groups), pl.DataFrame(rows)


# ---------------------------------------------------------------------------------- efficiency


def latency_per_user(
    score_fn: Callable[[Tensor], Tensor], users: Tensor, exclude: Tensor, k: int = 10, sample: int = 200, seed: int = 0
) -> dict[str, float]:
    """Top-``k`` for one user at a time (score, mask the user's known items, top-k): p50 / p95 /
    mean milliseconds over a seeded sample of ``users``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = users[torch.randperm(users.numel(), generator=generator)[:sample]]
    order = torch.argsort(exclude[0], stable=True)
    excluded_users, excluded_items = exclude[0][order], exclude[1][order]
    starts = torch.searchsorted(excluded_users, chosen)
    stops = torch.searchsorted(excluded_users, chosen, right=True)
    timings = []
    with torch.no_grad():
        for user, start, stop in zip(chosen.tolist(), starts.tolist(), stops.tolist()):
            began = time.perf_counter()
            scores = score_fn(torch.tensor([user]))[0].clone()
            scores[excluded_items[start:stop]] = float("-inf")
            scores.topk(k)
            timings.append(time.perf_counter() - began)
    if not timings:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0, "sampled_users": 0}
    values = torch.tensor(timings, dtype=torch.float64) * 1000.0
    quantiles = {"p50_ms": float(values.quantile(0.5)), "p95_ms": float(values.quantile(0.95))}
    return {**quantiles, "mean_ms": float(values.mean()), "sampled_users": len(timings)}


def memory_estimate_bytes(
    num_parameters: int,
    num_nodes: int,
    dim: int,
    num_edges: int,
    layers: int,
    num_users_scored: int,
    num_items: int,
    k: int,
    chunk_size: int = 2048,
) -> dict[str, int]:
    """Analytical float32 estimate of evaluation memory: weights, output embeddings, one message
    per edge, dimension and layer in the forward pass, one chunk of the score matrix and the
    top-K indices."""
    parts = {
        "parameters": 4 * num_parameters,
        "embeddings": 4 * num_nodes * dim,
        "messages": 4 * num_edges * dim * layers,
        "score_chunk": 4 * min(chunk_size, num_users_scored) * num_items,
        "topk": 8 * num_users_scored * k,
    }
    parts["total"] = sum(parts.values())
    return parts


class PeakMemory:
    """Measured peak resident memory of a block, above the resident memory at its start.

    Linux only: freed heap memory is first handed back to the system (glibc ``malloc_trim``) so
    the block's allocations show up in the resident set, then writing ``5`` to
    ``/proc/self/clear_refs`` resets the process's high-water mark (``VmHWM``), which is read back
    at the end. Elsewhere ``peak_bytes`` stays ``None``.
    """

    STATUS = Path("/proc/self/status")

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self._baseline: int | None = None

    def _read(self, field_name: str) -> int | None:
        try:
            match = re.search(rf"{field_name}:\s+(\d+)\s+kB", self.STATUS.read_text())
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    def __enter__(self) -> PeakMemory:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._baseline = self._read("VmRSS")
        except OSError:
            self._baseline = None
        return self

    def __exit__(self, *exc) -> None:
        peak = self._read("VmHWM")
        if self._baseline is not None and peak is not None:
            self.peak_bytes = max(peak - self._baseline, 0)


def comparison_summary(frame: pl.DataFrame, protocol: Protocol, digits: int = 4) -> pl.DataFrame:
    """The readable part of a comparison table (one row per config): config, split, the protocol's
    table metrics, the primary metric relative to most-popular, the gate, training seconds and
    epochs; metrics rounded to ``digits``, seconds to 0.1 (as text, so a markdown table shows "9.6",
    not "9.6000"). The full table (model family, every extra metric, task AUCs, latency) stays in the
    asset and the CSV."""
    columns = [
        "config",
        "split",
        *protocol.table,
        f"{protocol.primary} / most_popular",
        "gate",
        "train_seconds",
        "epochs",
    ]
    shown = frame.select([c for c in columns if c in frame.columns])
    shown = shown.with_columns(pl.col(c).round(digits) for c, dtype in shown.schema.items() if dtype.is_float())
    if "train_seconds" in shown.columns:
        shown = shown.with_columns(pl.col("train_seconds").round(1).cast(pl.String))
    return shown
