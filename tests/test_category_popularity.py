"""The category-popularity baseline (genre / artist / tag conditioned popularity, with backoff)
and fusing a graph model with any closed-form model (``fusion``)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import ConfigError, configs_from_mapping, parse_config
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.models.baselines import CategoryError, CategoryPopularity
from spotify_engine_assets.core.training.trainer import FUSION_WEIGHTS
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, SCHEMA, add_reverse_edges
from spotify_engine_assets.datasets.playlists import graph as P

torch.set_num_threads(1)

# songs 0-2 by artist 0 (genre 0), songs 3-5 by artist 1 (genre 1), song 6 by artist 2 (genre 1)
SONG_ARTIST = [0, 0, 0, 1, 1, 1, 2]
SONG_GENRE = [0, 0, 0, 1, 1, 1, 1]
LISTENS_OF = {0: [0, 3], 1: [0, 1, 3, 4], 2: [1, 3, 4, 6], 3: [2, 5], 4: [0]}  # user -> songs


def graph(listens=LISTENS_OF) -> HeteroData:
    data = HeteroData()
    for node_type, count in {"user": len(listens), "song": 7, "artist": 3, "genre": 2}.items():
        data[node_type].num_nodes = count
    pairs = [(user, song) for user, songs in listens.items() for song in songs]
    data[LISTENS].edge_index = torch.tensor(pairs).t().contiguous()
    data[BY].edge_index = torch.tensor([list(range(7)), SONG_ARTIST])
    data[HAS].edge_index = torch.tensor([list(range(7)), SONG_GENRE])
    return add_reverse_edges(data)


def fitted(**settings) -> CategoryPopularity:
    config = parse_config({"name": "c", "model": "category_popularity", **settings})
    view = graph()
    model = build_model(config, SCHEMA, {t: int(view[t].num_nodes) for t in view.node_types})
    model.fit(view)
    return model


def dense_reference(category: list[int], smoothing: float, exponent: float, prior: np.ndarray) -> np.ndarray:
    """The formula with dense arrays: (n_uc p(i | c(i)) + smoothing * prior) / (n_u + smoothing)."""
    x = np.zeros((5, 7))
    for user, songs in LISTENS_OF.items():
        x[user, songs] = 1.0
    popularity = x.sum(0)
    member = np.zeros((7, max(category) + 1))
    member[np.arange(7), category] = 1.0
    counts = x @ member
    weight = popularity**exponent * (popularity > 0)
    p_item = (member * weight[:, None]) / np.maximum((member * weight[:, None]).sum(0), 1e-12)  # items x categories
    return (counts @ p_item.T + smoothing * prior) / (counts.sum(1, keepdims=True) + smoothing)


def global_prior() -> np.ndarray:
    x = np.zeros((5, 7))
    for user, songs in LISTENS_OF.items():
        x[user, songs] = 1.0
    return x.sum(0) / x.sum()


@pytest.mark.parametrize(
    ("category", "smoothing", "exponent"), [("genre", 1.0, 1.0), ("artist", 0.5, 0.7), ("genre", 0.0, 0.0)]
)
def test_scores_follow_the_formula(category, smoothing, exponent):
    model = fitted(category=category, smoothing=smoothing, popularity_exponent=exponent)
    expected = dense_reference(SONG_GENRE if category == "genre" else SONG_ARTIST, smoothing, exponent, global_prior())
    assert np.allclose(model.score(torch.arange(5)).numpy(), expected, atol=1e-6)


def test_backoff_smooths_toward_the_coarser_category():
    model = fitted(category="artist", smoothing=2.0, backoff="genre", backoff_smoothing=0.5)
    genre = dense_reference(SONG_GENRE, 0.5, 1.0, global_prior())
    expected = dense_reference(SONG_ARTIST, 2.0, 1.0, genre)
    assert np.allclose(model.score(torch.arange(5)).numpy(), expected, atol=1e-6)
    # user 4 heard only song 0 (artist 0, genre 0): unheard genre-0 songs of artist 0 first, then by popularity
    order = torch.argsort(model.score(torch.tensor([4]))[0], descending=True).tolist()
    assert order[:3] == [0, 1, 2]
    # song 6 (artist 2, genre 1) beats nothing of genre 0 for user 4, but backoff puts it above where the
    # global prior alone would: it shares user 2's genre
    plain = fitted(category="artist", smoothing=2.0).score(torch.tensor([2]))[0]
    backed = model.score(torch.tensor([2]))[0]
    assert backed[6] / backed.sum() > plain[6] / plain.sum()


def test_main_category_by_default_and_two_hop_categories():
    assert torch.equal(fitted().score(torch.arange(5)), fitted(category="artist").score(torch.arange(5)))
    pairs = [("p0", "t0"), ("p0", "t1"), ("p1", "t2"), ("p1", "t3"), ("p2", "t0"), ("p2", "t2")]
    edges = pl.DataFrame(
        {"playlist_key": [p for p, _ in pairs], "track_key": [t for _, t in pairs], "position": list(range(len(pairs)))}
    )
    tracks = pl.DataFrame({"track_key": ["t0", "t1", "t2", "t3"], "artist_key": ["a0", "a0", "a1", "a2"]})
    artist_genres = pl.DataFrame({"artist_key": ["a0", "a1", "a2"], "genre": ["rock", "jazz", "jazz"]})
    data, _ = P.build_playlist_graph(
        edges, tracks, artist_genres, P.GraphSettings(min_playlist_size=1, min_track_playlists=1)
    )
    view = P.message_passing_view(data, torch.arange(data[P.CONTAINS].edge_index.size(1)))
    num_nodes = {t: int(data[t].num_nodes) for t in data.node_types}
    config = parse_config({"name": "g", "model": "category_popularity", "category": "genre", "smoothing": 0.0})
    model = build_model(config, P.SCHEMA, num_nodes)
    model.fit(view)
    track = data["track"].node_id.index
    scores = model.score(torch.tensor([data["playlist"].node_id.index("p1")]))[0]  # p1: two jazz tracks
    # through track -> artist -> genre: the jazz tracks score, the rock ones do not (no smoothing)
    assert scores[track("t2")] > 0 and scores[track("t3")] > 0
    assert scores[track("t0")] == 0 and scores[track("t1")] == 0
    bad = parse_config({"name": "g", "model": "category_popularity", "category": "mood"})
    with pytest.raises(CategoryError, match="'mood' is not reachable from track.*artist.*genre"):
        build_model(bad, P.SCHEMA, num_nodes).fit(view)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="backoff 'artist' must differ"):
        configs_from_mapping(
            {"x": {"model": "category_popularity", "category": "artist", "backoff": "artist"}}, "m.yaml"
        )
    with pytest.raises(ConfigError, match="backoff_smoothing needs backoff"):
        configs_from_mapping({"x": {"model": "category_popularity", "backoff_smoothing": 3}}, "m.yaml")
    with pytest.raises(ConfigError, match="smoothing"):
        configs_from_mapping({"x": {"model": "category_popularity", "smoothing": -1}}, "m.yaml")


def test_fusion_settings():
    legacy = parse_config({"name": "f", "model": "lightgcn", "itemknn_fusion": True, "fusion_shrink": 5})
    assert legacy.fusion.model == "itemknn" and legacy.fusion.shrink == 5.0
    assert parse_config(legacy.model_dump()) == legacy  # a stored config reloads
    fused = parse_config(
        {"name": "f", "model": "gat_enhanced", "fusion": {"model": "category_popularity", "category": "genre"}}
    )
    assert fused.fusion.name == "fusion" and fused.fusion.category == "genre"
    problems = {
        "'lightgcn' found using 'model' does not match": {"fusion": {"model": "lightgcn"}},
        "fusion: seed: no effect": {"fusion": {"model": "itemknn", "seed": 3}},
        "fusion_weight needs fusion": {"fusion_weight": 0.5},
        "to train on validation too, fix fusion_weight": {
            "fusion": {"model": "ease"},
            "train_on_validation": True,
            "trainer": "simple",
        },
        "fusion, or the older itemknn_fusion": {"fusion": {"model": "ease"}, "itemknn_fusion": True},
        "fusion_weight: Input should be less than 1": {"fusion": {"model": "ease"}, "fusion_weight": 1.0},
    }
    for message, settings in problems.items():
        with pytest.raises(ConfigError, match=message):
            configs_from_mapping({"x": {"model": "lightgcn", **settings}}, "m.yaml")
    final = parse_config(
        {
            "name": "f",
            "model": "lightgcn",
            "fusion": {"model": "ease"},
            "fusion_weight": 0.3,
            "train_on_validation": True,
            "trainer": "simple",
        }
    )
    assert final.fusion_weight == 0.3


def test_fused_graph_model_mixes_with_the_closed_form_scores():
    view = graph()
    num_nodes = {t: int(view[t].num_nodes) for t in view.node_types}
    prior = {"model": "category_popularity", "category": "artist", "smoothing": 1.0}
    config = parse_config(
        {
            "name": "f",
            "model": "lightgcn",
            "embedding_dim": 4,
            "num_layers": 1,
            "fusion": prior,
            "fusion_weight": 0.4,
            "max_epochs": 2,
            "trainer": "simple",
        }
    )
    model = build_model(config, SCHEMA, num_nodes)
    result = model.fit(view)
    assert float(model.fusion_weight) == pytest.approx(0.4) and result.fusion == {}
    users = torch.arange(5)
    other = build_model(parse_config({"name": "p", **prior}), SCHEMA, num_nodes)
    other.fit(view)

    def z(values):
        return (values - values.mean(1, keepdim=True)) / values.std(1, keepdim=True)

    expected = 0.6 * z(model.embedding_scores(users)) + 0.4 * z(other.score(users))
    assert torch.allclose(model.score(users), expected, atol=1e-5)
    assert torch.equal(model.score(users, fusion_weight=0.0), model.embedding_scores(users))
    assert max(FUSION_WEIGHTS) < 1.0  # a fused config never drops the graph model's scores
