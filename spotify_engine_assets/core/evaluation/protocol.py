"""Evaluation protocols: how a chain ranks lists and which metrics judge them.

A protocol is everything evaluation needs to know about a chain besides the data: the list
length and tie rule of the masked top-K, the per-user accuracy metrics of the report, the
validation metric training stops on (``monitor``) and the chain's primary test metric. Training
(``core/training``), the metric report (``core/evaluation/report.py``), studies and A/B tests
take it as an argument; a chain with its own metric set (the RecSys Challenge 2018 metrics of the
playlist chain) implements the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor
from torch_geometric.data import HeteroData

from .metrics import ACCURACY_KS, accuracy_per_user, link_prediction_metrics, topk_scored

ScoreFn = Callable[[Tensor], Tensor]


class Protocol:
    """The interface (module docstring)."""

    primary: str  # the chain's primary test metric (gates, champion, comparisons)
    monitor: str  # the validation metric early stopping and studies follow
    report_k: int  # the report ranks this many items per user
    table: tuple[str, ...]  # the metrics of the chain's comparison table
    beyond_k: int = 10  # lists cut here for coverage, Gini, novelty, diversity, personalization

    def for_graph(self, data: HeteroData) -> Protocol:
        """The protocol with what it reads from a graph (e.g. each item's artist); default: itself."""
        return self

    def topk(self, score_fn: ScoreFn, users: Tensor, exclude: Tensor, num_items: int, k: int) -> Tensor:
        raise NotImplementedError

    def per_user(self, topk: Tensor, rows: Tensor, items: Tensor, num_items: int) -> dict[str, Tensor]:
        """Per-user accuracy values (one row of ``topk`` each) against the relevant ``(rows, items)``."""
        raise NotImplementedError

    def validate(
        self, score_fn: ScoreFn, known: Tensor, heldout: Tensor, num_items: int, users: Tensor | None = None
    ) -> dict[str, float]:
        """Validation metrics (``monitor`` among them): rank every item for each user with a held-out
        pair (among ``users`` when given), masking the ``known`` pairs."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinkPrediction(Protocol):
    """Rank the whole catalogue, score PyG's link-prediction metrics (binary relevance, NDCG's ideal
    DCG over ``min(K, |relevant|)``, means over users with a relevant item).

    Args:
        primary, monitor: Test and validation metric names.
        ks: Cut-offs of the report's Recall, Precision, NDCG, MRR and HitRate.
        valid_ks: Cut-offs of the validation metrics (Recall and NDCG, Precision and HitRate at 10).
        coverage_k: Validation coverage cut-off.
        stable: Break ties toward the lower item index (published protocols need it).
        chunk_size: Users scored per chunk.
        clip: Lists of the whole masked catalogue when a validation K exceeds it (else an error).
    """

    primary: str = "ndcg@10"
    monitor: str = "recall@10"
    ks: tuple[int, ...] = ACCURACY_KS
    valid_ks: tuple[int, ...] = (10,)
    coverage_k: int = 10
    stable: bool = False
    chunk_size: int = 2048
    clip: bool = False
    table: tuple[str, ...] = (
        "recall@10",
        "recall@20",
        "ndcg@10",
        "ndcg@20",
        "precision@10",
        "hit_rate@10",
        "coverage@10",
    )

    @property
    def report_k(self) -> int:
        return max(*self.ks, self.beyond_k)

    def topk(self, score_fn: ScoreFn, users: Tensor, exclude: Tensor, num_items: int, k: int) -> Tensor:
        return topk_scored(score_fn, users, exclude, num_items, k, self.chunk_size, self.stable)

    def per_user(self, topk: Tensor, rows: Tensor, items: Tensor, num_items: int) -> dict[str, Tensor]:
        return accuracy_per_user(topk, rows, items, self.ks)

    def validate(
        self, score_fn: ScoreFn, known: Tensor, heldout: Tensor, num_items: int, users: Tensor | None = None
    ) -> dict[str, float]:
        return link_prediction_metrics(
            score_fn,
            heldout,
            known,
            num_items,
            self.valid_ks,
            users=users,
            stable=self.stable,
            chunk_size=self.chunk_size,
            coverage_k=self.coverage_k,
            clip=self.clip,
        )
