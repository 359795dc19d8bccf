"""The comprehensive evaluation: summary equals the spine's metrics on the hand example,
per-user vectors, fairness slices, efficiency measurements."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from test_metrics import EXCLUDE, RELEVANT, SONG_EMB, USER_EMB, expected_values
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.evaluation.metrics import ranking_metrics
from spotify_engine_assets.core.evaluation.protocol import LinkPrediction
from spotify_engine_assets.core.evaluation.report import (
    EvaluationData,
    PeakMemory,
    evaluate,
    fairness_tables,
    latency_per_user,
    memory_estimate_bytes,
)
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS

torch.set_num_threads(1)

TYPES = ("casual", "power", "regular", "power")


def dot_scores(user_emb, song_emb):
    """The score function of dot-product embeddings (what the old evaluate took as embeddings)."""
    return lambda users: user_emb[users] @ song_emb.T


def genre_features(num_songs: int, song_genres: torch.Tensor, num_genres: int) -> torch.Tensor:
    """Multi-hot genre vector of every song (was EvaluationData.genre_features)."""
    features = torch.zeros(num_songs, max(num_genres, 1))
    features[song_genres[0], song_genres[1]] = 1.0
    return features


def hand_data() -> EvaluationData:
    return EvaluationData(
        num_users=4,
        num_items=15,
        train=EXCLUDE[:, :2],  # user 0: songs 0, 2
        valid=EXCLUDE[:, 2:],  # user 1: song 14
        test=RELEVANT,
        user_ids=torch.tensor([100, 101, 102, 103]),
        categories={"genre": genre_features(15, torch.stack([torch.arange(15), torch.arange(15) % 3]), 3)},
        user_types=TYPES,
    )


def test_summary_matches_hand_computed_metrics():
    evaluation = evaluate(
        dot_scores(USER_EMB, SONG_EMB), (USER_EMB, SONG_EMB), hand_data(), LinkPrediction(ks=(2, 5, 10))
    )
    for name, value in expected_values().items():
        assert evaluation.summary[name] == pytest.approx(value, abs=1e-6), name
    assert evaluation.summary["mrr@5"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert 0.0 <= evaluation.summary["gini@10"] <= 1.0
    assert 0.0 <= evaluation.summary["personalization@10"] <= 1.0
    # top-10s: u0 [1, 3..11], u1 [13..4], u3 [0..9]; overlaps u0-u1 {4..11} = 8, u0-u3 {1, 3..9} = 8,
    # u1-u3 {4..9} = 6
    assert evaluation.summary["personalization@10"] == pytest.approx(1 - (8 + 8 + 6) / 3 / 10)


def test_summary_equals_spine_ranking_metrics_on_random_data():
    g = torch.Generator().manual_seed(0)
    users, songs = 40, 60
    user_emb, song_emb = torch.randn(users, 8, generator=g), torch.randn(songs, 8, generator=g)
    keys = torch.unique(torch.randint(users * songs, (700,), generator=g))
    pairs = torch.stack([keys // songs, keys % songs])[:, torch.randperm(keys.numel(), generator=g)]
    train, valid, test = pairs[:, :350], pairs[:, 350:420], pairs[:, 420:]
    data = EvaluationData(
        users,
        songs,
        train,
        valid,
        test,
        torch.arange(users),
        {"genre": genre_features(songs, torch.stack([torch.arange(songs), torch.arange(songs) % 4]), 4)},
        None,
    )
    evaluation = evaluate(dot_scores(user_emb, song_emb), (user_emb, song_emb), data, DATASET.protocol)
    spine = ranking_metrics(user_emb, song_emb, test, torch.cat([train, valid], dim=1))
    for name, value in spine.items():
        assert evaluation.summary[name] == pytest.approx(value, abs=1e-6), name
    assert evaluation.per_user.height == spine["users_evaluated"]
    assert set(evaluation.per_user["user_type"]) == {"unknown"}


def test_per_user_frame_and_fairness_slices():
    evaluation = evaluate(
        dot_scores(USER_EMB, SONG_EMB), (USER_EMB, SONG_EMB), hand_data(), LinkPrediction(ks=(2, 5, 10))
    )
    frame = evaluation.per_user
    assert frame["user_id"].to_list() == [100, 101, 103]
    assert frame["user_type"].to_list() == ["casual", "power", "power"]
    assert frame["train_interactions"].to_list() == [2, 0, 0]
    assert frame["activity_tercile"].to_list() == ["high", "low", "mid"]
    assert frame["recall@10"].to_list() == pytest.approx([1.0, 1.0, 0.0])
    by_type = evaluation.fairness.filter(pl.col("dimension") == "user_type").sort("group")
    assert by_type["group"].to_list() == ["casual", "power"]
    assert by_type["users"].to_list() == [1, 2]
    assert by_type["recall@10"].to_list() == pytest.approx([1.0, 0.5])
    gap = evaluation.gaps.filter((pl.col("dimension") == "user_type") & (pl.col("metric") == "recall@10")).row(
        0, named=True
    )
    assert (gap["best_group"], gap["worst_group"]) == ("casual", "power")
    assert gap["gap"] == pytest.approx(0.5) and gap["relative_gap"] == pytest.approx(0.5)
    tercile_gap = evaluation.gaps.filter(
        (pl.col("dimension") == "activity_tercile") & (pl.col("metric") == "recall@10")
    )
    assert tercile_gap["gap"].item() == pytest.approx(1.0)
    assert tercile_gap["worst_group"].item() == "mid"


def test_fairness_tables_zero_best_group_has_zero_relative_gap():
    frame = pl.DataFrame({"user_type": ["a", "b"], "activity_tercile": ["low", "high"], "m": [0.0, 0.0]})
    _, gaps = fairness_tables(frame, ["m"])
    assert gaps["relative_gap"].to_list() == [0.0, 0.0]


def test_from_graph_joins_user_types_and_names_missing_users():
    data = HeteroData()
    data["user"].num_nodes, data["user"].node_id = 2, torch.tensor([7, 9])
    data["song"].num_nodes, data["song"].node_id = 3, torch.tensor([1, 2, 3])
    data["genre"].num_nodes, data["genre"].node_id = 1, torch.tensor([0])
    data[LISTENS].edge_index = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])
    data[HAS].edge_index = torch.tensor([[0, 1, 2], [0, 0, 0]])
    # the listening schema's evaluation data also holds each song's artist features
    data["artist"].num_nodes, data["artist"].node_id = 1, torch.tensor([0])
    data[BY].edge_index = torch.tensor([[0, 1, 2], [0, 0, 0]])
    split = {"train": torch.tensor([0, 2]), "valid": torch.tensor([1]), "test": torch.tensor([3])}
    segments = pl.DataFrame({"user_id": [9, 7], "user_type": ["power", "casual"]})
    config = DATASET.registry.base["most_popular"]  # no user sample, no training on validation
    built = DATASET.evaluation_data(data, split, config, segments)
    assert built.user_types == ("casual", "power")
    assert built.test.tolist() == [[1], [2]]
    assert built.categories["genre"].tolist() == [[1.0], [1.0], [1.0]]
    with pytest.raises(ValueError, match=r"user_id \[9\]"):
        DATASET.evaluation_data(data, split, config, segments.head(1).with_columns(pl.lit(7).alias("user_id")))
    with pytest.raises(ValueError, match="user_type"):
        DATASET.evaluation_data(data, split, config, segments.select("user_id"))


def test_evaluate_without_test_pairs_raises():
    data = hand_data()
    empty = EvaluationData(**{**data.__dict__, "test": torch.empty(2, 0, dtype=torch.long)})
    with pytest.raises(ValueError, match="no held-out"):
        evaluate(dot_scores(USER_EMB, SONG_EMB), (USER_EMB, SONG_EMB), empty, LinkPrediction(ks=(2,)))


def test_latency_profile_and_masking():
    g = torch.Generator().manual_seed(0)
    user_emb, song_emb = torch.randn(50, 8, generator=g), torch.randn(100, 8, generator=g)
    latency = latency_per_user(
        dot_scores(user_emb, song_emb), torch.arange(50), torch.empty(2, 0, dtype=torch.long), k=10, sample=20
    )
    assert latency["sampled_users"] == 20
    assert 0 < latency["p50_ms"] <= latency["p95_ms"]


def test_memory_estimate_parts():
    parts = memory_estimate_bytes(
        num_parameters=10, num_nodes=5, dim=2, num_edges=3, layers=2, num_users_scored=4, num_items=6, k=2, chunk_size=3
    )
    assert parts == {"parameters": 40, "embeddings": 40, "messages": 48, "score_chunk": 72, "topk": 64, "total": 264}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed")
def test_peak_memory_sees_a_large_allocation():
    with PeakMemory() as memory:
        block = torch.ones(10_000_000)  # 40 MB
        block += 1
        del block
    assert memory.peak_bytes is not None and memory.peak_bytes >= 30_000_000


def test_comparison_summary_is_a_readable_table():
    from spotify_engine_assets.core.evaluation.report import comparison_summary
    from spotify_engine_assets.core.plots import frame_markdown

    protocol = DATASET.protocol
    row = {
        "config": "gat_basic",
        "model": "gat",
        "split": "random",
        **dict.fromkeys(protocol.table, 0.123456789),
        f"most_popular {protocol.primary}": 0.1,
        f"{protocol.primary} / most_popular": 1.23456789,
        "gate": "pass",
        "train_seconds": 12.3456,
        "epochs": 7,
        "parameters": 1000,
        "mrr@10": 0.5,
        "auc_complete": None,
        "latency_p50_ms": None,
    }
    frame = pl.DataFrame([row, {**row, "config": "most_popular", "model": "most_popular", "auc_complete": 0.7}])
    summary = comparison_summary(frame, protocol)
    assert summary.columns == [
        "config",
        "split",
        *protocol.table,
        f"{protocol.primary} / most_popular",
        "gate",
        "train_seconds",
        "epochs",
    ]
    assert summary.row(0, named=True)[protocol.table[0]] == 0.1235 and summary["train_seconds"][0] == "12.3"
    assert "| 0.1235 | 1.2346 | pass | 12.3 | 7 |" in frame_markdown(summary)
    markdown = frame_markdown(frame)
    assert "None" not in markdown and "| gat_basic | gat |" in markdown
    assert markdown.splitlines()[2].endswith("| 1000 | 0.5000 |  |  |")  # blanks where a value is missing
