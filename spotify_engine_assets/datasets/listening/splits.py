"""Leakage-free splits of user-song interactions (indices into the listens edges).

* :func:`random_split`: per user, a seeded random 70/15/15 split of that user's songs.
* :func:`temporal_split`: per user, the songs discovered last (by first play time) go to
  validation and test; the past trains.

Every user with at least ``min_interactions`` interactions gets at least one validation and one
test interaction and keeps at least one for training; users with fewer stay train-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.data.splits import TEST, TRAIN, VALID


class SplitError(ValueError):
    """Invalid split settings."""


@dataclass(frozen=True)
class SplitSettings:
    valid_fraction: float = 0.15
    test_fraction: float = 0.15
    min_interactions: int = 3
    seed: int = 0

    def validate(self) -> None:
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise SplitError(f"{name} must be in (0, 1), got {value}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise SplitError("valid_fraction + test_fraction must leave room for training")
        if self.min_interactions < 3:
            raise SplitError(f"min_interactions must be >= 3, got {self.min_interactions}")


def _assign_by_rank(users: np.ndarray, order: np.ndarray, settings: SplitSettings) -> np.ndarray:
    """Label each edge, given an order grouping edges by user (ascending user, then rank key): a
    user's last ranks go to test, the ones before to validation."""
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[sorted_users]
    n = counts[sorted_users]
    # at least one of each part, and never so many held out that training is left empty
    n_test = np.clip(np.rint(settings.test_fraction * n), 1, np.maximum(n - 2, 1)).astype(np.int64)
    n_valid = np.clip(np.rint(settings.valid_fraction * n), 1, np.maximum(n - 1 - n_test, 1)).astype(np.int64)
    eligible = n >= settings.min_interactions
    label_sorted = np.full(len(order), TRAIN, dtype=np.int8)
    label_sorted[eligible & (rank >= n - n_test)] = TEST
    label_sorted[eligible & (rank >= n - n_test - n_valid) & (rank < n - n_test)] = VALID
    labels = np.empty_like(label_sorted)
    labels[order] = label_sorted
    return labels


def random_split(users: np.ndarray, settings: SplitSettings) -> np.ndarray:
    """Per-user seeded random split; returns a label (0 train, 1 valid, 2 test) per edge."""
    settings.validate()
    rng = np.random.default_rng(settings.seed)
    order = np.lexsort((rng.random(len(users)), users))
    return _assign_by_rank(users, order, settings)


def temporal_split(users: np.ndarray, times: np.ndarray, settings: SplitSettings) -> np.ndarray:
    """Per-user split by time: each user's latest-discovered songs are validation, then test."""
    settings.validate()
    # ties broken by edge position so the split is deterministic
    order = np.lexsort((np.arange(len(users)), times, users))
    return _assign_by_rank(users, order, settings)
