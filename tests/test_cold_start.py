"""Cold start on hand-made data: the adaptive genre weight, genre-conditioned popularity,
blending, and the held-out-user evaluation (no held-out edge ever reaches training)."""

from __future__ import annotations

import pytest
import torch
from test_recommend import random_graph

import spotify_engine_assets.core.serving.cold_start as cold_start
from spotify_engine_assets.core.config import parse_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.models import build_model, embed
from spotify_engine_assets.core.serving.cold_start import (
    adaptive_weight,
    blend,
    evaluate_cold_start,
    genre_profile_of_songs,
    genre_scores,
    holdout_users,
    song_genre_matrix,
    stated_genres,
    tune_genre_prior,
)
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA

torch.set_num_threads(1)


def test_adaptive_weight():
    assert adaptive_weight(0, 5) == 1.0  # genres only for a user with no songs
    assert adaptive_weight(5, 5) == 0.5
    assert adaptive_weight(95, 5) == pytest.approx(0.05)
    weights = [adaptive_weight(n, 5) for n in range(0, 200, 7)]
    assert weights == sorted(weights, reverse=True)
    assert adaptive_weight(3, 0) == 0.0 and adaptive_weight(0, 0) == 1.0
    with pytest.raises(ValueError):
        adaptive_weight(-1, 5)


def test_genre_scores_rank_popular_songs_of_the_profile_genres_first():
    data, _ = random_graph()
    matrix = song_genre_matrix(data, SCHEMA)
    assert torch.allclose(matrix.sum(1), torch.ones(matrix.size(0)))  # every toy song has a genre
    popularity = torch.arange(matrix.size(0)).float()  # later songs more popular
    profile = torch.tensor([0.0, 0.0, 1.0, 0.0])
    scores = genre_scores(matrix, popularity, profile)
    in_genre = (matrix[:, 2] > 0).nonzero().flatten()
    top = scores.topk(in_genre.numel()).indices
    assert set(top.tolist()) == set(in_genre.tolist())
    assert scores.sum() == pytest.approx(1.0)  # a distribution over songs
    single = [s for s in in_genre.tolist() if matrix[s].count_nonzero() == 1]
    assert scores[single].tolist() == sorted(scores[single].tolist())  # popularity order within a genre
    # a batch of profiles gives one row per profile; an empty profile falls back to popularity
    batch = genre_scores(matrix, popularity, torch.cat([torch.eye(4), torch.zeros(1, 4)]))
    assert torch.allclose(batch[2], scores)
    assert batch[4].argmax() == matrix.size(0) - 1 and torch.equal(
        batch[4], genre_scores(matrix, popularity, torch.zeros(4))
    )


def test_profiles_and_stated_genres():
    data, _ = random_graph()
    matrix = song_genre_matrix(data, SCHEMA)
    songs = torch.tensor([0, 3])  # song 0: genres 0 and 1; song 3: genres 3 and 0
    profile = genre_profile_of_songs(matrix, songs)
    assert torch.allclose(profile, torch.tensor([0.5, 0.25, 0.0, 0.25]))
    stated = stated_genres(matrix, songs, top=1)
    assert stated.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert genre_profile_of_songs(matrix, torch.empty(0, dtype=torch.long)).sum() == 0


def test_blend_ends_and_per_user_weights():
    model = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    genre = torch.tensor([[0.1, 0.5, 0.2], [0.7, 0.2, 0.1]])
    assert torch.equal(blend(model, genre, 1.0).argmax(1), torch.tensor([1, 0]))
    assert torch.equal(blend(model, genre, 0.0).argmax(1), torch.tensor([0, 2]))
    mixed = blend(model, genre, torch.tensor([1.0, 0.0]))
    assert torch.equal(mixed.argmax(1), torch.tensor([1, 2]))


def test_holdout_users_are_seeded_and_eligible():
    data, _ = random_graph()
    users = holdout_users(data, SCHEMA, 0.5, 8, seed=1)
    counts = torch.bincount(data[LISTENS].edge_index[0])
    assert (counts[users] >= 8).all() and torch.equal(users, holdout_users(data, SCHEMA, 0.5, 8, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        holdout_users(data, SCHEMA, 1.5, 8, seed=1)


def test_evaluate_cold_start_never_trains_on_heldout_users():
    data, train = random_graph()
    listens = data[LISTENS].edge_index
    valid = torch.tensor([i for i in range(listens.size(1)) if i % 4 == 0])
    seen = {}
    config = parse_config({"name": "toy", "model": "gat_enhanced", "embedding_dim": 8, "heads": 2})

    def fit(split):
        view = DATASET.view_for(data, split, config)  # what DATASET.fit trains on
        valid_pairs = DATASET.pairs(data, split["valid"])
        assert torch.equal(view[LISTENS].edge_index, data[LISTENS].edge_index[:, split["train"]])
        seen["users"] = set(view[LISTENS].edge_index[0].tolist())
        seen["valid_users"] = set(valid_pairs[0].tolist())
        return build_model(config, SCHEMA, num_nodes_of(data))

    result = evaluate_cold_start(DATASET, data, train, valid, valid, fit, reveal=(1, 3), fraction=0.4, seed=0, n0=4.0)
    heldout = set(holdout_users(data, SCHEMA, 0.4, 6, seed=0).tolist())
    assert result["heldout_users"] == len(heldout) > 0
    assert not heldout & seen["users"] and not heldout & seen["valid_users"]
    methods = {(row["method"], row["revealed"]) for row in result["rows"]}
    assert {
        ("most_popular", 0),
        ("genres_only (top 3)", 0),
        ("songs_model_foldin", 3),
        ("songs_adaptive_inductive", 1),
    } <= methods
    for row in result["rows"]:
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@10"] <= 1.0
        if row["method"] == "songs_adaptive_foldin":
            assert row["genre_weight"] == pytest.approx(4.0 / (4.0 + row["revealed"]))
    # no collaborative model: genre and popularity rows only
    only = evaluate_cold_start(DATASET, data, train, valid, valid, lambda split: None, reveal=(1,), fraction=0.4)
    assert {row["method"] for row in only["rows"]} == {"most_popular", "genres_only (top 3)", "songs_genre"}


def test_tune_genre_prior_picks_the_best_grid_value():
    data, train = random_graph()
    from spotify_engine_assets.datasets.listening.graph import message_passing_graph

    view = message_passing_graph(data, train)
    config = parse_config({"name": "toy", "model": "lightgcn", "embedding_dim": 8})
    user_emb, song_emb = embed(build_model(config, SCHEMA, num_nodes_of(data)), view)
    valid = data[LISTENS].edge_index[
        :, torch.tensor([i for i in range(data[LISTENS].edge_index.size(1)) if i % 4 == 0])
    ]
    best, scores = tune_genre_prior(user_emb, song_emb, view, valid, SCHEMA, grid=(0.0, 3.0, 1e6))
    assert set(scores) == {0.0, 3.0, 1e6} and scores[best] == max(scores.values())


def test_tune_genre_prior_in_chunks_and_on_a_user_sample(monkeypatch):
    """Chunks of users give the same scores as one chunk; ``max_users`` ranks a seeded sample only."""
    import spotify_engine_assets.core.evaluation.metrics as metrics
    from spotify_engine_assets.datasets.listening.graph import message_passing_graph

    data, train = random_graph()
    view = message_passing_graph(data, train)
    config = parse_config({"name": "toy", "model": "lightgcn", "embedding_dim": 8})
    user_emb, song_emb = embed(build_model(config, SCHEMA, num_nodes_of(data)), view)
    valid = data[LISTENS].edge_index[:, ::4]
    whole = tune_genre_prior(user_emb, song_emb, view, valid, SCHEMA, grid=(0.0, 3.0, 1e6))
    monkeypatch.setattr(metrics, "SCORE_CHUNK_ELEMENTS", 3 * int(data["song"].num_nodes))  # 3 users a chunk
    assert tune_genre_prior(user_emb, song_emb, view, valid, SCHEMA, grid=(0.0, 3.0, 1e6)) == whole
    users = torch.unique(valid[0])
    sampled_users = []
    monkeypatch.setattr(
        cold_start, "_metrics", lambda topk, rows, *rest: sampled_users.append(topk.size(0)) or {"ndcg@10": 0.0}
    )
    tune_genre_prior(user_emb, song_emb, view, valid, SCHEMA, grid=(0.0,), max_users=users.numel() - 2)
    assert sampled_users == [users.numel() - 2]
