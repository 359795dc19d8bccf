"""Playlist library: RecSys 2018 metrics (hand-computed), k-core, the position split, the
leakage guard, ItemKNN, masking in evaluation, PlaylistGAT message flow, the config registry."""

import math

import polars as pl
import pytest
import torch

from spotify_engine_assets.core.config import ConfigError, parse_config
from spotify_engine_assets.core.data.graph import from_payload, num_nodes_of, to_payload
from spotify_engine_assets.core.data.splits import check_partition, labels_to_indices
from spotify_engine_assets.core.models import build_model, sample_users
from spotify_engine_assets.core.models.base import fused
from spotify_engine_assets.core.models.baselines import item_similarity
from spotify_engine_assets.core.models.gat import PlaylistGAT, cooccurrence_edges
from spotify_engine_assets.core.training.trainer import FUSION_WEIGHTS
from spotify_engine_assets.datasets.playlists import DATASET
from spotify_engine_assets.datasets.playlists import graph as P
from spotify_engine_assets.datasets.playlists.graph import SCHEMA
from spotify_engine_assets.datasets.playlists.metrics import artist_matches, evaluate, hit_matrix, recsys_metrics

# --- metrics ----------------------------------------------------------------------------------


def test_recsys_metrics_by_hand():
    topk = torch.tensor([[1, 3, 5, 7, 9], [2, 4, 6, 8, 10]])  # 10 = padding (num_items)
    rows, items = torch.tensor([0, 0, 1]), torch.tensor([3, 7, 0])
    hits = hit_matrix(topk, rows, items, num_items=10)
    assert hits.tolist() == [[False, True, False, True, False], [False] * 5]
    values = recsys_metrics(hits, torch.tensor([2, 1]), ks=(2, 5))
    assert values["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert values["recall@5"] == pytest.approx((1.0 + 0) / 2)
    ndcg2_row0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert values["ndcg@2"] == pytest.approx(ndcg2_row0 / 2)
    ndcg5_row0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert values["ndcg@5"] == pytest.approx(ndcg5_row0 / 2)
    assert values["r_precision_track"] == pytest.approx((0.5 + 0) / 2)  # |G|=2: one hit in the top 2
    assert "r_precision" not in values  # the challenge's R-precision needs the artists
    assert values["clicks"] == pytest.approx((0 + 51) / 2)  # first hit at rank 2 -> 0; none -> 51
    assert values["playlists_evaluated"] == 2


# tracks 0-2 by artist 0, 3-4 by artist 1, 5-6 by artist 2, 7 by artist 3, 8 unknown artist; 9 = padding
TRACK_ARTIST = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, -1])


def test_r_precision_with_artist_credit_by_hand():
    topk = torch.tensor(
        [
            [1, 3, 2, 4, 9],  # G={0,3}: 1 is artist 0 (partial), 3 exact -> (1 + .25) / 2
            [1, 2, 4, 0, 5],  # G={0,5,7}: 1 and 2 both artist 0 (credited once), 4 artist 1 not in G; 0 is past |G|
            [0, 1, 3, 4, 5],  # G={0,3}: 0 exact (artist 0 credited), 1 by artist 0 earns nothing more
            [9, 9, 9, 9, 9],  # G={3,4,5}: an empty list
            [8, 6, 7, 0, 1],  # G={5,8}: 8 exact (unknown artist), 6 is artist 2 (partial) -> (1 + .25) / 2
        ]
    )
    rows = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4])
    items = torch.tensor([0, 3, 0, 5, 7, 0, 3, 3, 4, 5, 5, 8])
    counts = torch.bincount(rows, minlength=5)
    hits = hit_matrix(topk, rows, items, num_items=9)
    credits = artist_matches(topk, hits, counts, rows, items, TRACK_ARTIST)
    assert credits.tolist() == [1, 1, 0, 0, 1]
    values = recsys_metrics(hits, counts, ks=(5,), artist_credits=credits)
    per_playlist = [(1 + 0.25) / 2, 0.25 / 3, 1 / 2, 0.0, (1 + 0.25) / 2]
    assert values["r_precision"] == pytest.approx(sum(per_playlist) / 5)
    assert values["r_precision_track"] == pytest.approx((0.5 + 0 + 0.5 + 0 + 0.5) / 5)


def _r_precision_reference(ranked: list[int], truth: set[int], track_artist: list[int]) -> float:
    """The definition read literally, one playlist at a time."""
    top = ranked[: len(truth)]
    exact = [t for t in top if t in truth]
    truth_artists = {track_artist[t] for t in truth if track_artist[t] >= 0}
    credited = {track_artist[t] for t in exact}
    partial = {track_artist[t] for t in top if t not in truth and track_artist[t] in truth_artists - credited}
    return (len(exact) + 0.25 * len(partial)) / len(truth)


def test_r_precision_matches_a_literal_reference_on_random_lists():
    generator = torch.Generator().manual_seed(3)
    num_tracks, n, length = 40, 60, 12
    track_artist = torch.randint(-1, 6, (num_tracks,), generator=generator)
    topk = torch.stack([torch.randperm(num_tracks, generator=generator)[:length] for _ in range(n)])
    topk[torch.rand(n, length, generator=generator) < 0.1] = num_tracks  # some padding
    truth = [
        set(
            torch.randperm(num_tracks, generator=generator)[
                : int(torch.randint(1, 15, (1,), generator=generator))
            ].tolist()
        )
        for _ in range(n)
    ]
    rows = torch.tensor([r for r, items in enumerate(truth) for _ in items])
    items = torch.tensor([i for items in truth for i in sorted(items)])
    counts = torch.bincount(rows, minlength=n)
    hits = hit_matrix(topk, rows, items, num_tracks)
    values = recsys_metrics(
        hits, counts, ks=(10,), artist_credits=artist_matches(topk, hits, counts, rows, items, track_artist)
    )
    artists = track_artist.tolist()
    expected = [_r_precision_reference([t for t in topk[r].tolist()], truth[r], artists + [-1]) for r in range(n)]
    assert values["r_precision"] == pytest.approx(sum(expected) / n)
    assert values["r_precision"] > values["r_precision_track"]  # the random lists do earn artist credit


def test_evaluate_reports_both_r_precisions_with_artists():
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    relevant = torch.tensor([[0, 0], [0, 3]])  # G={0,3}; ranking 1 (artist 0), 3, 2, ...
    values = evaluate(
        lambda rows: scores.expand(rows.numel(), -1),
        relevant,
        torch.empty((2, 0), dtype=torch.long),
        9,
        ks=(2,),
        track_artist=TRACK_ARTIST,
    )
    assert values["r_precision"] == pytest.approx(0.625) and values["r_precision_track"] == pytest.approx(0.5)
    assert "r_precision" not in evaluate(
        lambda rows: scores.expand(rows.numel(), -1), relevant, torch.empty((2, 0), dtype=torch.long), 9, ks=(2,)
    )


@pytest.mark.parametrize("rank, clicks", [(1, 0), (10, 0), (11, 1), (25, 2), (500, 49)])
def test_clicks_pages_of_ten(rank, clicks):
    hits = torch.zeros((1, 500), dtype=torch.bool)
    hits[0, rank - 1] = True
    assert recsys_metrics(hits, torch.tensor([1]), ks=(10,))["clicks"] == clicks


def test_padding_is_never_a_hit_and_rows_without_truth_are_skipped():
    topk = torch.tensor([[4, 4], [0, 1]])
    hits = hit_matrix(topk, torch.tensor([1]), torch.tensor([1]), num_items=4)
    assert hits.tolist() == [[False, False], [False, True]]
    values = recsys_metrics(hits, torch.tensor([0, 1]), ks=(2,))
    assert values["playlists_evaluated"] == 1 and values["recall@2"] == 1.0
    with pytest.raises(ValueError, match="no playlist"):
        recsys_metrics(hits, torch.tensor([0, 0]), ks=(2,))


# --- graph and split --------------------------------------------------------------------------


def _edges(pairs):
    return pl.DataFrame(
        {"playlist_key": [p for p, _ in pairs], "track_key": [t for _, t in pairs], "position": list(range(len(pairs)))}
    )


def test_kcore_iterates_until_stable():
    edges = _edges([("p1", "t1"), ("p1", "t2"), ("p1", "t3"), ("p2", "t1"), ("p2", "t2"), ("p3", "t3"), ("p3", "t4")])
    kept, rounds = P.kcore_filter(edges, P.GraphSettings(min_playlist_size=2, min_track_playlists=2))
    assert sorted(kept.select("playlist_key", "track_key").rows()) == [
        ("p1", "t1"),
        ("p1", "t2"),
        ("p2", "t1"),
        ("p2", "t2"),
    ]
    assert len(rounds) >= 3 and rounds[-1]["edges"] == 4


def _toy_graph(genres=True):
    pairs = [("p0", f"t{i}") for i in range(7)] + [("p1", f"t{i}") for i in (6, 5, 0, 1, 2, 3)] + [("p2", "t0")]
    tracks = pl.DataFrame(
        {"track_key": [f"t{i}" for i in range(8)], "artist_key": ["a0", "a0", "a1", "a1", "a2", "a2", "a3", "a3"]}
    )
    artist_genres = pl.DataFrame({"artist_key": ["a0", "a1", "a3"], "genre": ["rock", "rock", "jazz"]})
    if not genres:
        artist_genres = artist_genres.clear()
    data, _ = P.build_playlist_graph(
        _edges(pairs), tracks, artist_genres, P.GraphSettings(min_playlist_size=1, min_track_playlists=1)
    )
    return data


def test_graph_has_every_node_type_and_reverse_edges():
    data = _toy_graph()
    assert {t: data[t].num_nodes for t in P.NODE_TYPES} == {"playlist": 3, "track": 7, "artist": 4, "genre": 2}
    assert data[P.CONTAINS].edge_index.size(1) == 14
    assert torch.equal(data[P.REV_CONTAINS].edge_index, data[P.CONTAINS].edge_index.flip(0))
    assert data[P.ARTIST_HAS].edge_index.size(1) == 3
    # positions renumbered 0..n-1 per playlist, keeping order
    p1 = data[P.CONTAINS].edge_index[0] == data["playlist"].node_id.index("p1")
    assert sorted(data[P.CONTAINS].position[p1].tolist()) == list(range(6))
    restored = from_payload(to_payload(data))
    assert torch.equal(restored[P.CONTAINS].edge_index, data[P.CONTAINS].edge_index)
    assert _toy_graph(genres=False)["genre"].num_nodes == 0


def test_graph_fails_clearly_when_filters_remove_everything():
    tracks = pl.DataFrame({"track_key": ["t"], "artist_key": ["a"]})
    with pytest.raises(P.PlaylistGraphError, match="no playlist-track edge survives"):
        P.build_playlist_graph(
            _edges([("p", "t")]),
            tracks,
            pl.DataFrame({"artist_key": [], "genre": []}, schema={"artist_key": pl.Utf8, "genre": pl.Utf8}),
            P.GraphSettings(min_playlist_size=2),
        )


def test_split_holds_out_last_tracks_by_position():
    edge_index = torch.tensor([[0] * 7 + [1] * 6, [3, 0, 6, 1, 5, 2, 4, 0, 1, 2, 3, 4, 5]])
    position = torch.tensor([3, 0, 6, 1, 5, 2, 4, 0, 1, 2, 3, 4, 5])
    labels = P.split_labels(edge_index, position, 2, P.SplitSettings(holdout=2, min_train_tracks=3))
    by_position = {int(pos): int(label) for pos, label in zip(position[:7], labels[:7])}
    assert by_position == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}
    assert labels[7:].tolist() == [0] * 6  # 6 < 2*2+3: train-only


def test_leakage_guard_passes_clean_split_and_catches_a_leak():
    data = _toy_graph()
    settings = P.SplitSettings(holdout=1, min_train_tracks=2)
    split = labels_to_indices(P.split_labels(data[P.CONTAINS].edge_index, data[P.CONTAINS].position, 3, settings))
    assert split["test"].numel() == 2 and split["valid"].numel() == 2
    assert sum(P.split_violations(data, {"position": split}).values()) == 0
    assert sum(check_partition(split, 14).values()) == 0
    assert P.heldout_position_violations(data, split) == 0
    view = P.message_passing_view(data, split["train"])
    assert view["playlist"].num_train_tracks.tolist() == [5, 4, 1]
    leaky = {**split, "train": torch.cat([split["train"], split["test"][:1]])}
    assert P.split_violations(data, {"position": leaky})["position/heldout_in_view"] == 1
    assert check_partition(leaky, 14)["duplicated"] == 1
    swapped = {
        **split,
        "train": torch.cat([split["train"][1:], split["test"][:1]]),
        "test": torch.cat([split["test"][1:], split["train"][:1]]),
    }
    assert P.heldout_position_violations(data, swapped) >= 1


# --- models -----------------------------------------------------------------------------------


def _matrix_view(pairs, num_playlists, num_tracks):
    view = P.message_passing_view(_empty_graph(num_playlists, num_tracks, pairs), torch.arange(len(pairs)))
    return view


def _empty_graph(num_playlists, num_tracks, pairs):
    from torch_geometric.data import HeteroData

    data = HeteroData()
    for t, n in zip(P.NODE_TYPES, (num_playlists, num_tracks, 1, 0)):
        data[t].num_nodes = n
    data[P.CONTAINS].edge_index = torch.tensor(pairs).T
    data[P.CONTAINS].position = torch.zeros(len(pairs), dtype=torch.long)
    data[P.TRACK_BY].edge_index = torch.stack([torch.arange(num_tracks), torch.zeros(num_tracks, dtype=torch.long)])
    data[P.ARTIST_HAS].edge_index = torch.empty((2, 0), dtype=torch.long)
    return data


def test_itemknn_cosine_by_hand():
    view = _matrix_view([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2)], 3, 3)
    similarity = item_similarity(view, SCHEMA, shrink=0.0).toarray()
    assert similarity[0, 1] == pytest.approx(2 / math.sqrt(3 * 2), rel=1e-5)
    assert similarity[0, 2] == pytest.approx(1 / math.sqrt(3), rel=1e-5)
    assert similarity[1, 2] == 0 and similarity[0, 0] == 0
    itemknn = build_model(parse_config({"name": "knn", "model": "itemknn", "shrink": 0.0}), SCHEMA, num_nodes_of(view))
    itemknn.fit(view)
    scores = itemknn.score(torch.tensor([2]))
    assert scores[0, 1].item() == pytest.approx(2 / math.sqrt(6), rel=1e-5)


def test_evaluate_masks_known_tracks():
    scores = torch.tensor([[9.0, 1.0, 5.0, 0.0]])
    known = torch.tensor([[0], [0]])  # playlist 0 knows track 0 (the top score)
    relevant = torch.tensor([[0], [2]])
    values = evaluate(lambda rows: scores.expand(rows.numel(), -1), relevant, known, 4, ks=(1,))
    assert values["recall@1"] == 1.0 and values["clicks"] == 0
    unmasked = evaluate(
        lambda rows: scores.expand(rows.numel(), -1), relevant, torch.empty((2, 0), dtype=torch.long), 4, ks=(1,)
    )
    assert unmasked["recall@1"] == 0.0


def test_playlist_gat_messages_reach_playlists_through_artists():
    data = _toy_graph()
    num_nodes = {t: data[t].num_nodes for t in P.NODE_TYPES}
    config = parse_config(
        {"name": "g", "model": "playlist_gat", "embedding_dim": 8, "num_layers": 2, "heads": 2, "dropout": 0.0}
    )
    model = PlaylistGAT(config, SCHEMA, num_nodes).eval()
    view = P.message_passing_view(data, torch.arange(data[P.CONTAINS].edge_index.size(1)))
    before, _ = model(view)
    artist = data["artist"].node_id.index("a2")  # tracks t4, t5: only in p0 and p1
    with torch.no_grad():
        model.embeddings["artist"].weight[artist] += 5.0
    after, _ = model(view)
    changed = (after - before).abs().sum(1) > 1e-6
    p = {name: data["playlist"].node_id.index(name) for name in ("p0", "p1", "p2")}
    assert changed[p["p0"]] and changed[p["p1"]] and not changed[p["p2"]]


def test_cooccurrence_edges_keep_each_tracks_top_k_by_cosine():
    # tracks 0,1 co-occur twice; 0,2 once; 1,2 never; 3 alone
    view = _matrix_view([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 3)], 4, 4)
    edges = cooccurrence_edges(view, SCHEMA, k=1, shrink=0.0)
    received = {int(t): int(s) for s, t in edges.T}
    assert received == {0: 1, 1: 0, 2: 0}  # 3 co-occurs with nothing: no edge
    both = cooccurrence_edges(view, SCHEMA, k=5, shrink=0.0)
    assert sorted(map(tuple, both.T.tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]


def test_playlist_gat_without_playlist_ids_is_built_from_tracks():
    data = _toy_graph()
    # p0 and p1 share tracks; give p2 the same single track as a copy of itself
    num_nodes = {t: data[t].num_nodes for t in P.NODE_TYPES}
    settings = {
        "model": "playlist_gat",
        "embedding_dim": 8,
        "num_layers": 2,
        "heads": 2,
        "cooccurrence_k": 2,
        "cooccurrence_shrink": 0.0,
        "user_ids": False,
    }
    model = PlaylistGAT(parse_config({"name": "g0", **settings, "dropout": 0.0}), SCHEMA, num_nodes).eval()
    assert "playlist" not in model.embeddings
    view = P.message_passing_view(data, torch.arange(data[P.CONTAINS].edge_index.size(1)))
    playlists, _ = model(view)
    p2 = data["playlist"].node_id.index("p2")  # holds only t0
    t0 = data["track"].node_id.index("t0")
    with torch.no_grad():
        model.embeddings["track"].weight[t0] += 3.0
    changed, _ = model(view)
    assert not torch.allclose(changed[p2], playlists[p2])  # p2 is what its track says
    config = parse_config(
        {
            "name": "g",
            "model": "playlist_gat",
            "embedding_dim": 8,
            "heads": 2,
            "cooccurrence_k": 2,
            "cooccurrence_shrink": 0.0,
            "user_ids": False,
        }
    )
    rebuilt = build_model(config, SCHEMA, num_nodes)
    rebuilt.load_state_dict(model.state_dict())  # the co-occurrence edges are rebuilt, not stored
    assert torch.allclose(rebuilt.eval()(view)[0], changed, atol=1e-6)


def test_training_restores_best_weights(tmp_path):
    data = _toy_graph()
    split = labels_to_indices(
        P.split_labels(data[P.CONTAINS].edge_index, data[P.CONTAINS].position, 3, P.SplitSettings(1, 2))
    )
    config = parse_config(
        {"name": "t", "model": "playlist_gat", "embedding_dim": 8, "heads": 2, "batch_size": 4, "user_sample": 3}
    )
    model, result, view = DATASET.fit(config, data, split, max_epochs=4)  # the sample of 3 = every playlist
    assert 1 <= result.epochs_run == len(result.history) <= 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, result.best_state[name]), name


def test_itemknn_fusion_weight_is_chosen_on_validation_and_stored():
    first = torch.tensor([[1.0, 2.0, 3.0]])
    second = torch.tensor([[3.0, 2.0, 1.0]])
    assert fused(first, second, 0.0) is first and fused(first, second, 1.0) is second
    half = fused(first, second, 0.5)
    assert torch.allclose(half, torch.zeros(1, 3), atol=1e-6)  # opposite standardized rows cancel
    data = _toy_graph()
    split = labels_to_indices(
        P.split_labels(data[P.CONTAINS].edge_index, data[P.CONTAINS].position, 3, P.SplitSettings(1, 2))
    )
    config = parse_config(
        {
            "name": "f",
            "model": "lightgcn",
            "embedding_dim": 8,
            "num_layers": 1,
            "batch_size": 4,
            "itemknn_fusion": True,
            "user_sample": 3,
        }
    )
    model, result, view = DATASET.fit(config, data, split, max_epochs=2)  # the sample of 3 = every playlist
    weights = result.fusion
    assert set(weights) == set(FUSION_WEIGHTS)
    chosen = float(result.best_state["fusion_weight"])
    assert weights[chosen] == max(weights.values())
    DATASET.load(config, data, split, result.best_state)[0].score(torch.arange(3))  # rebuilds with the stored weight


def test_registry_modes_and_validation(tmp_path):
    registry = DATASET.registry.base
    # user_sample and max_epochs replace the modes: baselines on 50,000 playlists (was mode "full"),
    # the tuned GNNs on 5,000 playlists for at most 25 epochs (was mode "tuned")
    sizes = {name: (c.user_sample, c.max_epochs if c.trainable else None) for name, c in registry.items()}
    assert sizes == {
        "most_popular": (50000, None),
        "itemknn": (50000, None),
        "lightgcn": (5000, 25),
        "lightgcn_itemknn": (5000, 25),
        "playlist_gat": (5000, 25),
        "playlist_gat_itemknn": (5000, 25),
        "artist_popularity": (50000, None),
        "genre_popularity": (50000, None),
        "ease": (50000, None),
        "lightgcn_ease": (5000, 25),
        "playlist_gat_ease": (5000, 25),
    }
    assert {"most_popular", "itemknn", "lightgcn", "playlist_gat"} <= set(registry)
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {model: itemknn, shrinkage: 3}\n")
    with pytest.raises(ConfigError, match="config 'x': shrinkage"):
        DATASET.registry.load(bad)
    bad.write_text("x: {model: itemknn, split: huge}\n")  # a config names something the chain does not have
    with pytest.raises(ConfigError, match="config 'x': split: 'huge' is not a split strategy of the playlists chain"):
        DATASET.registry.load(bad)
    assert sample_users(10, 4, seed=0).numel() == 4 and sample_users(3, 4, seed=0) is None  # None: every playlist
