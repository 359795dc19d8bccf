"""Tests of masked top-K ranking and the ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spotify_engine_assets.core.evaluation.metrics import (
    catalog_coverage,
    metric_collection,
    ranking_metrics,
    topk_scored,
)

torch.set_num_threads(1)


def brute_force_topk(user_emb, song_emb, users, exclude, k):
    excluded = {(int(u), int(s)) for u, s in exclude.t().tolist()}
    rows = []
    for u in users.tolist():
        scores = (user_emb[u] * song_emb).sum(-1).tolist()
        candidates = [s for s in range(song_emb.size(0)) if (u, s) not in excluded]
        candidates.sort(key=lambda s: -scores[s])
        rows.append(candidates[:k])
    return rows


# ---------------------------------------------------------------------------------- topk_scored


@pytest.mark.parametrize("chunk_size", [1, 3, 2048])
def test_topk_excluding_matches_brute_force(chunk_size):
    g = torch.Generator().manual_seed(0)
    num_users, num_songs, k = 12, 30, 5
    user_emb = torch.randn(num_users, 4, generator=g, dtype=torch.float64)
    song_emb = torch.randn(num_songs, 4, generator=g, dtype=torch.float64)
    exclude = torch.stack(
        [torch.randint(num_users, (120,), generator=g), torch.randint(num_songs, (120,), generator=g)]
    )
    users = torch.tensor([7, 0, 3, 11, 5, 2, 9])  # a subset, not sorted
    top = topk_scored(lambda u: user_emb[u] @ song_emb.T, users, exclude, num_songs, k, chunk_size=chunk_size)
    assert top.shape == (len(users), k)
    assert top.tolist() == brute_force_topk(user_emb, song_emb, users, exclude, k)
    excluded = {(int(u), int(s)) for u, s in exclude.t().tolist()}
    for row, u in enumerate(users.tolist()):
        assert not any((u, s) in excluded for s in top[row].tolist())


def test_topk_excluding_masks_the_best_song():
    user_emb = torch.tensor([[1.0], [1.0]])
    song_emb = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    exclude = torch.tensor([[0, 0, 1], [0, 2, 4]])
    top = topk_scored(lambda u: user_emb[u] @ song_emb.T, torch.tensor([0, 1]), exclude, 5, k=3)
    assert top.tolist() == [[1, 3, 4], [0, 1, 2]]


def test_topk_excluding_never_returns_excluded_pairs_even_for_heavy_users():
    """User 0 has played 8 of 10 songs; only 2 may be recommended, even when asking for k=5.

    (Masked scores are -inf, but topk still picks them once the unmasked songs run out.)"""
    user_emb = torch.tensor([[1.0], [1.0]])
    song_emb = torch.arange(10, 0, -1, dtype=torch.float32).view(-1, 1)
    exclude = torch.stack([torch.zeros(8, dtype=torch.long), torch.arange(8)])
    top = topk_scored(lambda u: user_emb[u] @ song_emb.T, torch.tensor([0, 1]), exclude, 10, k=5)
    returned_excluded = set(top[0].tolist()) & set(range(8))
    assert not returned_excluded, f"excluded songs {sorted(returned_excluded)} recommended to user 0"
    assert top[0].tolist() == [8, 9, 10, 10, 10]  # empty slots hold the sentinel num_songs
    assert top[1].tolist() == [0, 1, 2, 3, 4]
    assert catalog_coverage(top, num_items=10, k=5) == 7 / 10  # the sentinel is not a covered song


def test_topk_excluding_k_bounds():
    user_emb, song_emb = torch.randn(2, 3), torch.randn(4, 3)
    none = torch.empty(2, 0, dtype=torch.long)
    assert topk_scored(lambda u: user_emb[u] @ song_emb.T, torch.tensor([0, 1]), none, 4, k=4).shape == (2, 4)
    with pytest.raises(ValueError, match="k must be"):
        topk_scored(lambda u: user_emb[u] @ song_emb.T, torch.tensor([0, 1]), none, 4, k=5)
    with pytest.raises(ValueError, match="k must be"):
        topk_scored(lambda u: user_emb[u] @ song_emb.T, torch.tensor([0, 1]), none, 4, k=0)


def test_topk_excluding_no_users():
    user_emb, song_emb = torch.randn(2, 3), torch.randn(4, 3)
    top = topk_scored(
        lambda u: user_emb[u] @ song_emb.T,
        torch.empty(0, dtype=torch.long),
        torch.empty(2, 0, dtype=torch.long),
        4,
        k=2,
    )
    assert top.shape == (0, 2)


# ---------------------------------------------------------------------------------- hand example
#
# 15 songs with 1-d embedding song_emb[j] = 15 - j, so a user with embedding +1 ranks songs
# 0, 1, 2, ... and a user with embedding -1 ranks 14, 13, 12, ...
#
#   user 0 (+1): excluded {0, 2}  -> top-10 [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]; relevant {3, 6, 10}
#                 3 at rank 2, 6 at rank 5, 10 at rank 9
#   user 1 (-1): excluded {14}    -> top-10 [13, 12, 11, 10, 9, 8, 7, 6, 5, 4]; relevant {13} at rank 1
#   user 2 (+0.5): no relevant song -> not evaluated, not averaged in
#   user 3 (+1): nothing excluded -> top-10 [0, ..., 9]; relevant {14}: never retrieved
#
# ks = (2, 5):
#   recall@2  = (1/3 + 1 + 0) / 3 = 4/9
#   recall@5  = (2/3 + 1 + 0) / 3 = 5/9
#   ndcg@2    user 0: DCG = 1/log2(3); IDCG over min(2, 3) = 2: 1 + 1/log2(3); user 1: 1; user 3: 0
#   ndcg@5    user 0: DCG = 1/log2(3) + 1/log2(6); IDCG over min(5, 3) = 3: 1 + 1/log2(3) + 1/log2(4)
#   precision@10 = (3/10 + 1/10 + 0) / 3 = 2/15
#   hit_rate@10  = (1 + 1 + 0) / 3 = 2/3
#   coverage@10  = |{0..13}| / 15 = 14/15 (song 14 is excluded for user 1 and ranked last otherwise)


USER_EMB = torch.tensor([[1.0], [-1.0], [0.5], [1.0]])
SONG_EMB = torch.arange(15, 0, -1, dtype=torch.float32).view(-1, 1)
EXCLUDE = torch.tensor([[0, 0, 1], [0, 2, 14]])
RELEVANT = torch.tensor([[0, 0, 0, 1, 3], [3, 6, 10, 13, 14]])


def expected_values() -> dict[str, float]:
    l3, l6 = math.log2(3), math.log2(6)
    ndcg2_u0 = (1 / l3) / (1 + 1 / l3)
    ndcg5_u0 = (1 / l3 + 1 / l6) / (1 + 1 / l3 + 1 / 2)
    return {
        "recall@2": 4 / 9,
        "recall@5": 5 / 9,
        "ndcg@2": (ndcg2_u0 + 1 + 0) / 3,
        "ndcg@5": (ndcg5_u0 + 1 + 0) / 3,
        "precision@10": 2 / 15,
        "hit_rate@10": 2 / 3,
        "coverage@10": 14 / 15,
        "users_evaluated": 3,
    }


def test_hand_example_top_lists():
    top = topk_scored(lambda u: USER_EMB[u] @ SONG_EMB.T, torch.tensor([0, 1, 3]), EXCLUDE, 15, k=10)
    assert top.tolist() == [
        [1, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [13, 12, 11, 10, 9, 8, 7, 6, 5, 4],
        list(range(10)),
    ]


def test_ranking_metrics_hand_computed():
    values = ranking_metrics(USER_EMB, SONG_EMB, RELEVANT, EXCLUDE, ks=(2, 5))
    expected = expected_values()
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


def test_ranking_metrics_ignore_pair_order():
    perm = torch.tensor([4, 2, 0, 3, 1])
    values = ranking_metrics(USER_EMB, SONG_EMB, RELEVANT[:, perm], EXCLUDE[:, [2, 0, 1]], ks=(2, 5))
    for name, value in expected_values().items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


def test_user_without_relevant_songs_is_not_averaged_in():
    """Adding more users with no held-out songs changes nothing (user 2 already has none)."""
    more_users = torch.cat([USER_EMB, torch.tensor([[1.0], [-3.0]])])
    values = ranking_metrics(more_users, SONG_EMB, RELEVANT, EXCLUDE, ks=(2, 5))
    for name, value in expected_values().items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


def test_ranking_metrics_k_larger_than_song_count_raises():
    # default ks (10, 20): 20 > 15 songs
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(USER_EMB, SONG_EMB, RELEVANT, EXCLUDE)
    # precision/hit rate/coverage always need 10 songs
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(USER_EMB, SONG_EMB[:9], torch.tensor([[0], [3]]), EXCLUDE[:, :2], ks=(2,))


def test_ranking_metrics_without_heldout_pairs_raises():
    with pytest.raises(ValueError, match="no held-out"):
        ranking_metrics(USER_EMB, SONG_EMB, torch.empty(2, 0, dtype=torch.long), EXCLUDE, ks=(2,))


def test_recall_at_k_matches_hand_example():
    assert ranking_metrics(USER_EMB, SONG_EMB, RELEVANT, EXCLUDE, ks=(2,))["recall@2"] == pytest.approx(4 / 9)
    assert ranking_metrics(USER_EMB, SONG_EMB, RELEVANT, EXCLUDE, ks=(5,))["recall@5"] == pytest.approx(5 / 9)
    # recall@10: user 0 3/3, user 1 1/1, user 3 0/1
    assert ranking_metrics(USER_EMB, SONG_EMB, RELEVANT, EXCLUDE, ks=(10,))["recall@10"] == pytest.approx(2 / 3)


def test_metric_collection_names():
    collection = metric_collection(50, ks=(10, 20))
    assert set(collection.keys()) == {
        "recall@10",
        "ndcg@10",
        "recall@20",
        "ndcg@20",
        "precision@10",
        "hit_rate@10",
    }


def test_perfect_and_worst_rankings():
    # relevant song 0 for every user, scores put it first -> every metric 1 (coverage aside)
    user_emb = torch.ones(3, 1)
    song_emb = torch.arange(12, 0, -1, dtype=torch.float32).view(-1, 1)
    relevant = torch.tensor([[0, 1, 2], [0, 0, 0]])
    none = torch.empty(2, 0, dtype=torch.long)
    best = ranking_metrics(user_emb, song_emb, relevant, none, ks=(10,))
    assert best["recall@10"] == pytest.approx(1.0)
    assert best["ndcg@10"] == pytest.approx(1.0)
    assert best["precision@10"] == pytest.approx(0.1)
    assert best["coverage@10"] == pytest.approx(10 / 12)
    # the relevant song scored last -> outside the top 10 -> zeros
    worst = ranking_metrics(-user_emb, song_emb, relevant, none, ks=(10,))
    assert worst["recall@10"] == 0.0 and worst["ndcg@10"] == 0.0 and worst["hit_rate@10"] == 0.0


# ---------------------------------------------------------------------------------- per-user accuracy

from torch_geometric.metrics import LinkPredMRR, LinkPredPersonalization  # noqa: E402

from spotify_engine_assets.core.evaluation.metrics import (  # noqa: E402
    accuracy_per_user,
    gini,
    group_of_rank,
    intra_list_distance,
    novelty_per_user,
    personalization,
    popularity_probability,
    recommendation_counts,
)


def _hand_topk():
    users = torch.tensor([0, 1, 3])
    top = topk_scored(lambda u: USER_EMB[u] @ SONG_EMB.T, users, EXCLUDE, 15, k=10)
    row_of_user = torch.full((4,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(3)
    return top, row_of_user[RELEVANT[0]], RELEVANT[1]


def test_accuracy_per_user_hand_computed():
    top, rows, songs = _hand_topk()
    values = accuracy_per_user(top, rows, songs, ks=(2, 5, 10))
    # user 0: relevant at ranks 2, 5, 9 of 3 relevant; user 1: rank 1 of 1; user 3: none retrieved
    assert values["recall@5"].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert values["precision@10"].tolist() == pytest.approx([0.3, 0.1, 0.0])
    assert values["mrr@10"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert values["mrr@2"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert values["hit_rate@2"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    l3, l6 = math.log2(3), math.log2(6)
    assert values["ndcg@5"].tolist() == pytest.approx([(1 / l3 + 1 / l6) / (1 + 1 / l3 + 1 / 2), 1.0, 0.0])
    expected = expected_values()
    for name in ("recall@2", "recall@5", "ndcg@2", "ndcg@5"):
        assert float(values[name].mean()) == pytest.approx(expected[name], abs=1e-6)


def test_accuracy_per_user_means_equal_pyg_metrics():
    g = torch.Generator().manual_seed(3)
    user_emb, song_emb = torch.randn(30, 4, generator=g), torch.randn(50, 4, generator=g)
    relevant = torch.stack([torch.randint(30, (200,), generator=g), torch.randint(50, (200,), generator=g)])
    relevant = torch.unique(relevant, dim=1)
    users = torch.unique(relevant[0])
    top = topk_scored(lambda u: user_emb[u] @ song_emb.T, users, torch.empty(2, 0, dtype=torch.long), 50, k=20)
    row_of_user = torch.full((30,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    rows = row_of_user[relevant[0]]
    per_user = accuracy_per_user(top, rows, relevant[1], ks=(5, 10, 20))
    assert len(per_user) == 15
    collection = metric_collection(50, ks=(5, 10, 20))
    collection.update(top, (rows, relevant[1]))
    for name, value in collection.compute().items():
        assert float(per_user[name].mean()) == pytest.approx(float(value), abs=1e-6), name
    mrr = LinkPredMRR(10)
    mrr.update(top, (rows, relevant[1]))
    assert float(per_user["mrr@10"].mean()) == pytest.approx(float(mrr.compute()), abs=1e-6)


def test_accuracy_per_user_rejects_short_lists():
    with pytest.raises(ValueError, match="columns"):
        accuracy_per_user(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0]), torch.tensor([1]), ks=(10,))


# ---------------------------------------------------------------------------------- beyond accuracy


def test_gini_hand_values():
    assert gini(torch.tensor([0, 0, 1, 3])) == pytest.approx(0.625)  # mean |xi - xj| / (2 mean)
    assert gini(torch.tensor([2, 2, 2])) == pytest.approx(0.0)
    assert gini(torch.tensor([0, 0, 0, 5])) == pytest.approx(0.75)  # 1 - 1/n: one item has everything
    assert gini(torch.zeros(4)) == 0.0


def test_gini_counts_never_recommended_songs():
    top = torch.tensor([[0, 1], [0, 2]])
    counts = recommendation_counts(top, num_items=4, k=2)
    assert counts.tolist() == [2, 1, 1, 0]
    assert gini(counts) == pytest.approx(0.375)  # with song 3's zero
    assert gini(counts[:3]) == pytest.approx(1 / 6)  # what ignoring it would give


def test_recommendation_counts_skip_sentinel():
    top = torch.tensor([[0, 3], [1, 3]])  # 3 = sentinel for 3 songs
    assert recommendation_counts(top, num_items=3, k=2).tolist() == [1, 1, 0]


def test_novelty_hand_values():
    train = torch.tensor([[0, 1, 0, 1, 2], [0, 0, 2, 2, 2]])  # song 0: 2 listeners, song 1: 0, song 2: 3
    probability = popularity_probability(train, num_users=3, num_items=3)
    assert probability.tolist() == pytest.approx([3 / 4, 1 / 4, 1.0])
    top = torch.tensor([[0, 1], [2, 3]])  # user 1's second slot is the sentinel
    novelty = novelty_per_user(top, probability, k=2)
    assert novelty.tolist() == pytest.approx([(-math.log2(3 / 4) + 2.0) / 2, 0.0])


def test_intra_list_distance_hand_values():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    top = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 3, 3], [0, 0, 0]])
    ild = intra_list_distance(top, features, k=3)
    half_sqrt2 = math.sqrt(0.5)
    assert ild[0] == pytest.approx(1 - (0 + half_sqrt2 + half_sqrt2) / 3)
    assert ild[1] == pytest.approx(1.0)  # one valid pair, orthogonal
    assert ild[2] == pytest.approx(0.0)  # one song only
    assert ild[3] == pytest.approx(0.0)  # identical songs


def test_intra_list_distance_matches_pairwise_loop():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(20, 6, generator=g)
    top = torch.stack([torch.randperm(20, generator=g)[:5] for _ in range(7)])
    ild = intra_list_distance(top, features, k=5)
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    for row in range(7):
        sims = [float(unit[a] @ unit[b]) for i, a in enumerate(top[row]) for j, b in enumerate(top[row]) if i != j]
        assert ild[row] == pytest.approx(1 - sum(sims) / len(sims))


def test_personalization_hand_and_pyg():
    top = torch.tensor([[0, 1], [0, 2], [3, 4]])
    assert personalization(top, num_items=5, k=2) == pytest.approx(1 - (1 / 3) / 2)
    g = torch.Generator().manual_seed(1)
    top = torch.stack([torch.randperm(30, generator=g)[:6] for _ in range(25)])
    reference = LinkPredPersonalization(k=6, max_src_nodes=None)
    reference.update(top, torch.empty(2, 0, dtype=torch.long))
    assert personalization(top, num_items=30, k=6) == pytest.approx(float(reference.compute()), abs=1e-6)
    assert personalization(torch.tensor([[0, 1]] * 4), num_items=3, k=2) == pytest.approx(0.0)


def test_group_of_rank_equal_thirds_with_ties():
    groups = group_of_rank(torch.tensor([5, 1, 1, 1, 9, 3]))
    assert groups.tolist() == [2, 0, 0, 1, 2, 1]
    assert torch.bincount(groups).tolist() == [2, 2, 2]


def test_score_chunks_stay_below_the_mmap_threshold_without_changing_results(monkeypatch):
    import spotify_engine_assets.core.evaluation.metrics as metrics

    assert metrics.chunk_users(2048, 10_000) == 419 and metrics.chunk_users(2048, 100) == 2048
    assert metrics.chunk_users(2048, 10**9) == 1
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 40, generator=g)
    users, exclude = torch.arange(50), torch.stack([torch.arange(50), torch.arange(50) % 40])
    reference = topk_scored(lambda u: scores[u], users, exclude, 40, 5)
    chunks = []
    monkeypatch.setattr(metrics, "SCORE_CHUNK_ELEMENTS", 40 * 7)
    small = topk_scored(lambda u: chunks.append(len(u)) or scores[u], users, exclude, 40, 5)
    assert max(chunks) == 7 and torch.equal(small, reference)
