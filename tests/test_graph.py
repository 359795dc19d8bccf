"""Tests of the listening-graph builder (ids -> indices, edges, attributes, errors), the
leakage-free message-passing view, the held-out leak counter, and the weights-only payload."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math

import numpy as np
import polars as pl
import pytest
import torch

from spotify_engine_assets.core.data.graph import from_payload, graph_summary, heldout_in_view, to_payload
from spotify_engine_assets.datasets.listening.graph import (
    BY,
    HAS,
    LISTENS,
    REV_BY,
    REV_HAS,
    REV_LISTENS,
    SCHEMA,
    GraphBuildError,
    GraphTables,
    build_listening_graph,
    message_passing_graph,
)

torch.set_num_threads(1)

T0 = dt.datetime(2024, 3, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)

# Interaction rows, deliberately unsorted:
# (user_id, song_id, play_count, mean_completion, first_played_at, last_played_at)
INTERACTIONS = [
    (20, 103, 3, 0.50, T0 + DAY, T0 + 3 * DAY),
    (10, 105, 1, 1.00, T0, T0),
    (30, 101, 7, 0.25, T0 + 2 * DAY, T0 + 5 * DAY),
    (10, 101, 2, 0.75, T0 + DAY, T0 + 2 * DAY),
]


def make_tables(interactions=INTERACTIONS) -> GraphTables:
    """Ids that do not start at 0 and are not sorted in any table."""
    users = pl.DataFrame({"user_id": [30, 10, 20]}, schema={"user_id": pl.Int32})
    songs = pl.DataFrame(
        {"song_id": [105, 101, 103, 102], "artist_id": [7, 5, 7, 5]},
        schema={"song_id": pl.Int32, "artist_id": pl.Int32},
    )
    artists = pl.DataFrame({"artist_id": [7, 5]}, schema={"artist_id": pl.Int32})
    genres = pl.DataFrame({"genre_id": [42, 40]}, schema={"genre_id": pl.Int32})
    song_genres = pl.DataFrame(
        {"song_id": [103, 101, 105, 102, 103], "genre_id": [42, 40, 42, 42, 40]},
        schema={"song_id": pl.Int32, "genre_id": pl.Int32},
    )
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in interactions],
            "song_id": [r[1] for r in interactions],
            "play_count": [r[2] for r in interactions],
            "mean_completion": [r[3] for r in interactions],
            "first_played_at": [r[4] for r in interactions],
            "last_played_at": [r[5] for r in interactions],
        },
        schema={
            "user_id": pl.Int32,
            "song_id": pl.Int32,
            "play_count": pl.Int64,
            "mean_completion": pl.Float64,
            "first_played_at": pl.Datetime("us"),
            "last_played_at": pl.Datetime("us"),
        },
    )
    return GraphTables(users, songs, artists, genres, song_genres, inter)


@pytest.fixture(scope="module")
def graph():
    return build_listening_graph(make_tables())


def _pairs(edge_index: torch.Tensor) -> list[tuple[int, int]]:
    return sorted(map(tuple, edge_index.t().tolist()))


# ---------------------------------------------------------------------------------- nodes


def test_node_counts(graph):
    assert set(graph.node_types) == {"user", "song", "artist", "genre"}
    assert graph["user"].num_nodes == 3
    assert graph["song"].num_nodes == 4
    assert graph["artist"].num_nodes == 2
    assert graph["genre"].num_nodes == 2


def test_id_maps_are_sorted_original_ids(graph):
    # index i <-> node_id[i]; original ids sorted ascending
    assert graph["user"].node_id.tolist() == [10, 20, 30]
    assert graph["song"].node_id.tolist() == [101, 102, 103, 105]
    assert graph["artist"].node_id.tolist() == [5, 7]
    assert graph["genre"].node_id.tolist() == [40, 42]
    for t in graph.node_types:
        assert graph[t].node_id.dtype == torch.int64
        assert graph[t].node_id.numel() == graph[t].num_nodes


# ---------------------------------------------------------------------------------- listens


def test_listens_edges_hand_computed(graph):
    # users 10,20,30 -> 0,1,2; songs 101,102,103,105 -> 0,1,2,3
    # (10,105)->(0,3) (10,101)->(0,0) (20,103)->(1,2) (30,101)->(2,0)
    assert _pairs(graph[LISTENS].edge_index) == [(0, 0), (0, 3), (1, 2), (2, 0)]
    assert graph[LISTENS].edge_index.dtype == torch.int64


def test_listens_edges_map_back_to_original_rows(graph):
    """Every edge, mapped back through node_id, is an interaction row with the same attributes."""
    rows = {(r[0], r[1]): r for r in INTERACTIONS}
    store = graph[LISTENS]
    user_ids = graph["user"].node_id[store.edge_index[0]].tolist()
    song_ids = graph["song"].node_id[store.edge_index[1]].tolist()
    assert sorted(zip(user_ids, song_ids)) == sorted(rows)
    last_min = min(r[5] for r in INTERACTIONS)
    assert store.edge_attr.shape == (len(INTERACTIONS), 3)
    for e, key in enumerate(zip(user_ids, song_ids)):
        _, _, plays, completion, first, last = rows[key]
        log_plays, comp, last_days = store.edge_attr[e].tolist()
        assert log_plays == pytest.approx(math.log1p(plays), rel=1e-6)
        assert comp == pytest.approx(completion, rel=1e-6)
        assert last_days == pytest.approx((last - last_min) / DAY, abs=1e-6)
        assert store.play_count[e].item() == plays
        assert store.mean_completion[e].item() == pytest.approx(completion, rel=1e-6)
        assert store.first_played[e].item() == first.replace(tzinfo=dt.UTC).timestamp()
        assert store.last_played[e].item() == last.replace(tzinfo=dt.UTC).timestamp()


def test_listens_edge_attr_columns_explicit(graph):
    """Sorted by (user_id, song_id): (10,101) (10,105) (20,103) (30,101)."""
    edges = graph[LISTENS].edge_index.t().tolist()
    position = {tuple(p): i for i, p in enumerate(edges)}
    attr = graph[LISTENS].edge_attr
    expected = {
        (0, 0): [math.log1p(2), 0.75, 2.0],
        (0, 3): [math.log1p(1), 1.00, 0.0],
        (1, 2): [math.log1p(3), 0.50, 3.0],
        (2, 0): [math.log1p(7), 0.25, 5.0],
    }
    assert len(position) == 4
    for pair, values in expected.items():
        assert attr[position[pair]].tolist() == pytest.approx(values, rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------------------------- catalogue


def test_song_artist_edges(graph):
    # songs 101,102,103,105 -> 0..3; artists 5,7 -> 0,1
    # 105->7 (3,1), 101->5 (0,0), 103->7 (2,1), 102->5 (1,0)
    assert _pairs(graph[BY].edge_index) == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_song_genre_edges(graph):
    # genres 40,42 -> 0,1: (103,42)(101,40)(105,42)(102,42)(103,40)
    assert _pairs(graph[HAS].edge_index) == [(0, 0), (1, 1), (2, 0), (2, 1), (3, 1)]


@pytest.mark.parametrize("forward, backward", [(LISTENS, REV_LISTENS), (BY, REV_BY), (HAS, REV_HAS)])
def test_reverse_edges_are_exact_flips(graph, forward, backward):
    assert torch.equal(graph[backward].edge_index, graph[forward].edge_index.flip(0))


def test_reverse_listens_keeps_edge_attr(graph):
    assert torch.equal(graph[REV_LISTENS].edge_attr, graph[LISTENS].edge_attr)


def test_graph_summary_counts(graph):
    summary = graph_summary(graph)
    assert summary["nodes/user"] == 3
    assert summary["nodes/song"] == 4
    assert summary["edges/user__listens__song"] == 4
    assert summary["edges/song__rev_listens__user"] == 4
    assert summary["edges/song__by__artist"] == 4
    assert summary["edges/song__has__genre"] == 5


def test_empty_interactions_build_a_graph_without_listens():
    data = build_listening_graph(make_tables(interactions=[]))
    assert data[LISTENS].edge_index.shape == (2, 0)
    assert data[LISTENS].edge_attr.shape == (0, 3)
    assert data[BY].edge_index.size(1) == 4


# ---------------------------------------------------------------------------------- errors


def _replace(tables: GraphTables, **frames) -> GraphTables:
    return dataclasses.replace(tables, **frames)


@pytest.mark.parametrize(
    "table, column, frame_fn",
    [
        (
            "marts.user_song_interactions.user_id",
            "user_id",
            lambda t: t.interactions.with_columns(
                pl.when(pl.col("user_id") == 20).then(99).otherwise(pl.col("user_id")).cast(pl.Int32).alias("user_id")
            ),
        ),
        (
            "marts.user_song_interactions.song_id",
            "song_id",
            lambda t: t.interactions.with_columns(
                pl.when(pl.col("song_id") == 101).then(1).otherwise(pl.col("song_id")).cast(pl.Int32).alias("song_id")
            ),
        ),
    ],
)
def test_unknown_ids_in_interactions_name_the_table(table, column, frame_fn):
    tables = make_tables()
    with pytest.raises(GraphBuildError, match=table.replace(".", r"\.")):
        build_listening_graph(_replace(tables, interactions=frame_fn(tables)))


def test_unknown_artist_names_songs_table():
    tables = make_tables()
    songs = tables.songs.with_columns(pl.Series("artist_id", [7, 5, 8, 5], dtype=pl.Int32))
    with pytest.raises(GraphBuildError, match=r"marts\.songs\.artist_id.*\[8\]"):
        build_listening_graph(_replace(tables, songs=songs))


def test_unknown_genre_names_song_genres_table():
    tables = make_tables()
    sg = pl.concat(
        [tables.song_genres, pl.DataFrame({"song_id": [101], "genre_id": [1]}, schema=tables.song_genres.schema)]
    )
    with pytest.raises(GraphBuildError, match=r"marts\.song_genres\.genre_id"):
        build_listening_graph(_replace(tables, song_genres=sg))


def test_unknown_song_names_song_genres_table():
    tables = make_tables()
    sg = pl.concat(
        [tables.song_genres, pl.DataFrame({"song_id": [999], "genre_id": [40]}, schema=tables.song_genres.schema)]
    )
    with pytest.raises(GraphBuildError, match=r"marts\.song_genres\.song_id"):
        build_listening_graph(_replace(tables, song_genres=sg))


def test_duplicate_ids_name_the_table():
    tables = make_tables()
    users = pl.DataFrame({"user_id": [30, 10, 20, 10]}, schema={"user_id": pl.Int32})
    with pytest.raises(GraphBuildError, match=r"marts\.users.*duplicate"):
        build_listening_graph(_replace(tables, users=users))
    songs = pl.concat([tables.songs, tables.songs.head(1)])
    with pytest.raises(GraphBuildError, match=r"marts\.songs.*duplicate"):
        build_listening_graph(_replace(tables, songs=songs))


@pytest.mark.parametrize(
    "field, table",
    [("users", "marts.users"), ("songs", "marts.songs"), ("artists", "marts.artists"), ("genres", "marts.genres")],
)
def test_empty_table_names_the_table(field, table):
    tables = make_tables()
    empty = getattr(tables, field).clear()
    with pytest.raises(GraphBuildError, match=table.replace(".", r"\.") + ".*empty"):
        build_listening_graph(_replace(tables, **{field: empty}))


def test_graph_build_error_is_value_error():
    assert issubclass(GraphBuildError, ValueError)


# ---------------------------------------------------------------------------------- training view


def test_message_passing_graph_keeps_only_train_listens(graph):
    train_index = torch.tensor([0, 2])
    view = message_passing_graph(graph, train_index)
    assert torch.equal(view[LISTENS].edge_index, graph[LISTENS].edge_index[:, train_index])
    assert torch.equal(view[LISTENS].edge_attr, graph[LISTENS].edge_attr[train_index])
    assert torch.equal(view[REV_LISTENS].edge_index, view[LISTENS].edge_index.flip(0))
    assert torch.equal(view[REV_LISTENS].edge_attr, view[LISTENS].edge_attr)
    # all catalogue edges, both directions
    for edge_type in (BY, REV_BY, HAS, REV_HAS):
        assert torch.equal(view[edge_type].edge_index, graph[edge_type].edge_index)
    for t in graph.node_types:
        assert view[t].num_nodes == graph[t].num_nodes
        assert torch.equal(view[t].node_id, graph[t].node_id)
    assert set(view.edge_types) == set(graph.edge_types)
    # nothing else of the interaction data leaks into the view
    assert "play_count" not in view[LISTENS]
    assert "last_played" not in view[LISTENS]


def test_heldout_edges_in_clean_view_is_zero(graph):
    view = message_passing_graph(graph, torch.tensor([0, 2]))
    assert heldout_in_view(view, graph, SCHEMA, torch.tensor([1, 3])) == 0


def test_heldout_edge_planted_in_forward_listens_is_counted(graph):
    view = message_passing_graph(graph, torch.tensor([0, 2]))
    leaked = graph[LISTENS].edge_index[:, [3]]
    view[LISTENS].edge_index = torch.cat([view[LISTENS].edge_index, leaked], dim=1)
    assert heldout_in_view(view, graph, SCHEMA, torch.tensor([1, 3])) == 1


def test_heldout_edge_planted_in_reverse_listens_is_counted(graph):
    view = message_passing_graph(graph, torch.tensor([0, 2]))
    leaked = graph[LISTENS].edge_index[:, [1]].flip(0)
    view[REV_LISTENS].edge_index = torch.cat([view[REV_LISTENS].edge_index, leaked], dim=1)
    assert heldout_in_view(view, graph, SCHEMA, torch.tensor([1, 3])) == 1


def test_full_view_leaks_every_heldout_edge(graph):
    view = message_passing_graph(graph, torch.arange(4))
    assert heldout_in_view(view, graph, SCHEMA, torch.tensor([1, 3])) == 2


# ---------------------------------------------------------------------------------- payload


def _assert_same_graph(a, b):
    assert set(a.node_types) == set(b.node_types)
    assert set(a.edge_types) == set(b.edge_types)
    for t in a.node_types:
        assert a[t].num_nodes == b[t].num_nodes
        assert torch.equal(a[t].node_id, b[t].node_id)
    for t in a.edge_types:
        assert set(a[t].keys()) == set(b[t].keys())
        for key in a[t].keys():
            assert torch.equal(a[t][key], b[t][key]), (t, key)


def test_payload_round_trip_through_weights_only_load(graph):
    buffer = io.BytesIO()
    torch.save(to_payload(graph), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    restored = from_payload(loaded)
    _assert_same_graph(graph, restored)


def test_payload_round_trip_of_view(graph):
    view = message_passing_graph(graph, torch.tensor([0, 1, 3]))
    buffer = io.BytesIO()
    torch.save(to_payload(view), buffer)
    buffer.seek(0)
    _assert_same_graph(view, from_payload(torch.load(buffer, weights_only=True)))


def test_build_is_deterministic():
    a = build_listening_graph(make_tables())
    b = build_listening_graph(make_tables())
    _assert_same_graph(a, b)
    # row order of the input tables does not matter
    tables = make_tables()
    shuffled = dataclasses.replace(
        tables,
        interactions=tables.interactions.reverse(),
        songs=tables.songs.reverse(),
        song_genres=tables.song_genres.reverse(),
    )
    c = build_listening_graph(shuffled)
    assert torch.equal(c[LISTENS].edge_index, a[LISTENS].edge_index)
    assert torch.equal(c[LISTENS].edge_attr, a[LISTENS].edge_attr)
    assert _pairs(c[BY].edge_index) == _pairs(a[BY].edge_index)
    assert _pairs(c[HAS].edge_index) == _pairs(a[HAS].edge_index)
    assert np.array_equal(c["user"].node_id.numpy(), a["user"].node_id.numpy())
