"""Tests of the per-user random and temporal splits, the partition checker and the settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spotify_engine_assets.core.data.splits import TEST, TRAIN, VALID, check_partition, labels_to_indices
from spotify_engine_assets.datasets.listening.splits import (
    SplitError,
    SplitSettings,
    random_split,
    temporal_split,
)

torch.set_num_threads(1)


def _users_with_counts(counts: dict[int, int], seed: int = 0) -> np.ndarray:
    """One edge per interaction, users interleaved in a shuffled edge order."""
    users = np.concatenate([np.full(n, u, dtype=np.int64) for u, n in counts.items()])
    return np.random.default_rng(seed).permutation(users)


def _per_user(labels: np.ndarray, users: np.ndarray, user: int) -> tuple[int, int, int]:
    mine = labels[users == user]
    return int((mine == TRAIN).sum()), int((mine == VALID).sum()), int((mine == TEST).sum())


# ---------------------------------------------------------------------------------- random


def test_random_split_per_user_counts():
    # 20 -> 3 test (rint 3.0), 3 valid, 14 train; 7 -> 1/1/5; 3 -> 1/1/1; 2 (< min 3) all train
    users = _users_with_counts({0: 20, 1: 2, 2: 3, 3: 7, 5: 1})
    labels = random_split(users, SplitSettings())
    assert labels.shape == users.shape
    assert set(np.unique(labels)) <= {TRAIN, VALID, TEST}
    assert _per_user(labels, users, 0) == (14, 3, 3)
    assert _per_user(labels, users, 1) == (2, 0, 0)
    assert _per_user(labels, users, 2) == (1, 1, 1)
    assert _per_user(labels, users, 3) == (5, 1, 1)
    assert _per_user(labels, users, 5) == (1, 0, 0)


def test_random_split_min_interactions_setting():
    users = _users_with_counts({0: 4, 1: 5, 2: 6})
    labels = random_split(users, SplitSettings(min_interactions=5))
    assert _per_user(labels, users, 0) == (4, 0, 0)
    assert _per_user(labels, users, 1)[1:] == (1, 1)
    assert _per_user(labels, users, 2)[1:] == (1, 1)


def test_random_split_every_eligible_user_has_all_three_parts():
    rng = np.random.default_rng(3)
    counts = {u: int(rng.integers(1, 60)) for u in range(200)}
    users = _users_with_counts(counts, seed=4)
    settings = SplitSettings()
    labels = random_split(users, settings)
    for user, n in counts.items():
        train, valid, test = _per_user(labels, users, user)
        if n < settings.min_interactions:
            assert (train, valid, test) == (n, 0, 0)
        else:
            assert train >= 1 and valid >= 1 and test >= 1, (user, n, train, valid, test)
            assert train + valid + test == n
            # fractions respected up to rounding (half to even) and the at-least-one rule
            assert test == max(1, round(0.15 * n)), (user, n, test)
            assert valid == max(1, round(0.15 * n)), (user, n, valid)


@pytest.mark.parametrize(
    "valid_fraction, test_fraction",
    [(0.15, 0.15), (0.1, 0.2), (0.3, 0.3), (0.4, 0.4), (0.1, 0.8)],
)
def test_random_split_keeps_train_valid_and_test_for_any_valid_settings(valid_fraction, test_fraction):
    """The module contract: every eligible user keeps >= 1 train, >= 1 valid, >= 1 test edge,
    for every setting that SplitSettings.validate accepts."""
    settings = SplitSettings(valid_fraction=valid_fraction, test_fraction=test_fraction)
    settings.validate()  # accepted settings
    counts = {u: n for u, n in enumerate(range(3, 41))}
    users = _users_with_counts(counts)
    labels = random_split(users, settings)
    broken = []
    for user, n in counts.items():
        parts = _per_user(labels, users, user)
        if min(parts) < 1:
            broken.append((n, parts))
    assert not broken, f"users (n, (train, valid, test)) missing a part: {broken[:5]}"


def test_random_split_same_seed_same_labels_different_seed_different():
    users = _users_with_counts(dict.fromkeys(range(20), 30))
    a = random_split(users, SplitSettings(seed=11))
    b = random_split(users, SplitSettings(seed=11))
    c = random_split(users, SplitSettings(seed=12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # the per-user counts do not depend on the seed
    for u in range(20):
        assert _per_user(a, users, u) == _per_user(c, users, u)


def test_random_split_is_random_within_user():
    """Over many seeds, every edge of a user lands in the test part sometimes, in train sometimes."""
    users = np.zeros(10, dtype=np.int64)
    seen_test = np.zeros(10, dtype=bool)
    seen_train = np.zeros(10, dtype=bool)
    for seed in range(60):
        labels = random_split(users, SplitSettings(seed=seed))
        seen_test |= labels == TEST
        seen_train |= labels == TRAIN
    assert seen_test.all() and seen_train.all()


def test_random_split_rejects_invalid_settings():
    with pytest.raises(SplitError):
        random_split(np.zeros(5, dtype=np.int64), SplitSettings(valid_fraction=0.0))


# ---------------------------------------------------------------------------------- temporal


def test_temporal_split_valid_and_test_are_later_than_train():
    rng = np.random.default_rng(5)
    counts = {u: int(rng.integers(1, 40)) for u in range(60)}
    users = _users_with_counts(counts, seed=6)
    times = rng.permutation(len(users)).astype(np.float64) * 37.0 + 1e9  # distinct times
    settings = SplitSettings()
    labels = temporal_split(users, times, settings)
    checked = 0
    for user, n in counts.items():
        mask = users == user
        t, lab = times[mask], labels[mask]
        if n < settings.min_interactions:
            assert (lab == TRAIN).all()
            continue
        train_t, valid_t, test_t = t[lab == TRAIN], t[lab == VALID], t[lab == TEST]
        assert len(train_t) and len(valid_t) and len(test_t)
        assert train_t.max() < valid_t.min(), user
        assert valid_t.max() < test_t.min(), user
        checked += 1
    assert checked > 30


def test_temporal_split_hand_example():
    # user 4: times 50, 10, 40, 20, 30 -> order 10,20,30 train, 40 valid, 50 test
    users = np.array([4, 4, 4, 4, 4, 9, 9])
    times = np.array([50.0, 10.0, 40.0, 20.0, 30.0, 2.0, 1.0])
    labels = temporal_split(users, times, SplitSettings())
    assert labels.tolist() == [TEST, TRAIN, VALID, TRAIN, TRAIN, TRAIN, TRAIN]


def test_temporal_split_ties_are_broken_by_edge_position():
    users = np.zeros(5, dtype=np.int64)
    times = np.zeros(5)
    labels = temporal_split(users, times, SplitSettings())
    assert labels.tolist() == [TRAIN, TRAIN, TRAIN, VALID, TEST]
    assert np.array_equal(labels, temporal_split(users, times, SplitSettings(seed=99)))


def test_temporal_split_rejects_invalid_settings():
    with pytest.raises(SplitError):
        temporal_split(np.zeros(5, dtype=np.int64), np.arange(5.0), SplitSettings(min_interactions=1))


# ---------------------------------------------------------------------------------- partition


def test_labels_to_indices():
    labels = np.array([TRAIN, TEST, VALID, TRAIN, TEST], dtype=np.int8)
    parts = labels_to_indices(labels)
    assert set(parts) == {"train", "valid", "test"}
    assert parts["train"].tolist() == [0, 3]
    assert parts["valid"].tolist() == [2]
    assert parts["test"].tolist() == [1, 4]
    assert all(p.dtype == torch.int64 for p in parts.values())


def _clean_parts():
    users = _users_with_counts(dict.fromkeys(range(10), 12))
    labels = random_split(users, SplitSettings(seed=1))
    return labels_to_indices(labels), len(users)


def test_check_partition_clean_split_is_all_zero():
    parts, n = _clean_parts()
    assert check_partition(parts, n) == {"uncovered": 0, "duplicated": 0, "out_of_range": 0}


def test_check_partition_finds_duplicate():
    parts, n = _clean_parts()
    parts["valid"] = torch.cat([parts["valid"], parts["train"][:2]])
    assert check_partition(parts, n) == {"uncovered": 0, "duplicated": 2, "out_of_range": 0}


def test_check_partition_finds_uncovered():
    parts, n = _clean_parts()
    parts["test"] = parts["test"][1:]
    assert check_partition(parts, n) == {"uncovered": 1, "duplicated": 0, "out_of_range": 0}


def test_check_partition_finds_out_of_range():
    parts, n = _clean_parts()
    parts["test"] = torch.cat([parts["test"], torch.tensor([n, -1, n + 50])])
    assert check_partition(parts, n) == {"uncovered": 0, "duplicated": 0, "out_of_range": 3}


# ---------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"valid_fraction": 0.0}, "valid_fraction"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"valid_fraction": -0.1}, "valid_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "room for training"),
        ({"valid_fraction": 0.6, "test_fraction": 0.6}, "room for training"),
        ({"min_interactions": 2}, "min_interactions"),
    ],
)
def test_split_settings_validate_errors(kwargs, message):
    with pytest.raises(SplitError, match=message):
        SplitSettings(**kwargs).validate()


def test_split_settings_defaults_are_valid():
    SplitSettings().validate()
    SplitSettings(valid_fraction=0.2, test_fraction=0.2, min_interactions=3).validate()
    assert issubclass(SplitError, ValueError)
