"""Build the PyTorch Geometric ``HeteroData`` listening graph and its training view.

Node types: ``user``, ``song``, ``artist``, ``genre``. Each node store keeps ``node_id``, the
original warehouse id of every index (the id map). Edge types::

    (user, listens, song)   edge_attr = [log1p(play_count), mean_completion, last_play (days)]
    (song, by, artist)
    (song, has, genre)

plus the reverse of each (``rev_listens``, ``rev_by``, ``rev_has``). The listens edges also keep
``play_count``, ``mean_completion``, ``first_played`` and ``last_played`` (seconds since the
epoch) as separate tensors, so splits can be made by time.

Leakage: :func:`message_passing_graph` keeps only training listens edges; models see nothing
else of the interaction data during training and evaluation.

:data:`SCHEMA` names these relations for the core (models, training, evaluation, serving).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ...core.data.graph import Schema, add_reverse, positions_in, training_view
from ...core.dataset import split_violations as core_split_violations

LISTENS = ("user", "listens", "song")
REV_LISTENS = ("song", "rev_listens", "user")
BY = ("song", "by", "artist")
REV_BY = ("artist", "rev_by", "song")
HAS = ("song", "has", "genre")
REV_HAS = ("genre", "rev_has", "song")
NODE_TYPES = ("user", "song", "artist", "genre")
# listens edge_attr: log1p(play count), mean completion, days since the first last-play
SCHEMA = Schema(interaction=LISTENS, categories={"artist": BY, "genre": HAS}, interaction_attr_dim=3)


class GraphBuildError(ValueError):
    """The warehouse tables do not form a consistent graph."""


@dataclass(frozen=True)
class GraphTables:
    """The warehouse tables a graph is built from (marts schema)."""

    users: pl.DataFrame  # user_id
    songs: pl.DataFrame  # song_id, artist_id
    artists: pl.DataFrame  # artist_id
    genres: pl.DataFrame  # genre_id
    song_genres: pl.DataFrame  # song_id, genre_id
    interactions: pl.DataFrame  # user_id, song_id, play_count, mean_completion, first_played_at, last_played_at


def _index(ids: pl.Series, mapping_ids: np.ndarray, what: str) -> np.ndarray:
    """Map original ids to node indices; unknown ids are an error naming the table."""
    values = ids.to_numpy()
    position, unknown = positions_in(mapping_ids, values)
    if unknown.any():
        examples = np.unique(values[unknown])[:5].tolist()
        raise GraphBuildError(f"{what}: {int(unknown.sum())} rows reference unknown ids, e.g. {examples}")
    return position


def _sorted_ids(frame: pl.DataFrame, column: str, table: str) -> np.ndarray:
    ids = frame[column].to_numpy()
    if len(ids) == 0:
        raise GraphBuildError(f"{table}: table is empty")
    unique = np.unique(ids)
    if len(unique) != len(ids):
        raise GraphBuildError(f"{table}: column {column} has duplicate ids")
    return unique


def _epoch_seconds(column: pl.Series) -> np.ndarray:
    return column.dt.epoch("s").to_numpy().astype(np.float64)


def build_listening_graph(tables: GraphTables) -> HeteroData:
    """Assemble the heterogeneous graph from warehouse tables (ids mapped to dense indices)."""
    ids = {
        node_type: _sorted_ids(getattr(tables, f"{node_type}s"), f"{node_type}_id", f"marts.{node_type}s")
        for node_type in NODE_TYPES
    }
    data = HeteroData()
    for node_type, node_ids in ids.items():
        data[node_type].num_nodes = len(node_ids)
        data[node_type].node_id = torch.from_numpy(node_ids.astype(np.int64))

    inter = tables.interactions.sort(["user_id", "song_id"])
    users = _index(inter["user_id"], ids["user"], "marts.user_song_interactions.user_id")
    songs = _index(inter["song_id"], ids["song"], "marts.user_song_interactions.song_id")
    play_count = inter["play_count"].to_numpy().astype(np.float32)
    completion = inter["mean_completion"].to_numpy().astype(np.float32)
    first = _epoch_seconds(inter["first_played_at"])
    last = _epoch_seconds(inter["last_played_at"])
    last_days = ((last - last.min()) / 86400.0).astype(np.float32) if len(last) else last.astype(np.float32)

    listens = data[LISTENS]
    listens.edge_index = torch.from_numpy(np.stack([users, songs]).astype(np.int64))
    listens.edge_attr = torch.from_numpy(np.stack([np.log1p(play_count), completion, last_days], axis=1))
    listens.play_count = torch.from_numpy(play_count)
    listens.mean_completion = torch.from_numpy(completion)
    listens.first_played = torch.from_numpy(first)
    listens.last_played = torch.from_numpy(last)

    song_artist = _index(tables.songs["artist_id"], ids["artist"], "marts.songs.artist_id")
    song_index = _index(tables.songs["song_id"], ids["song"], "marts.songs.song_id")
    data[BY].edge_index = torch.from_numpy(np.stack([song_index, song_artist]).astype(np.int64))
    sg_song = _index(tables.song_genres["song_id"], ids["song"], "marts.song_genres.song_id")
    sg_genre = _index(tables.song_genres["genre_id"], ids["genre"], "marts.song_genres.genre_id")
    data[HAS].edge_index = torch.from_numpy(np.stack([sg_song, sg_genre]).astype(np.int64))
    add_reverse_edges(data)
    return data


def graph_from_world(world) -> HeteroData:
    """The listening graph straight from a generated world (a :class:`~.generator.SyntheticWorld`),
    without the warehouse: for benchmarks and experiments. Plays are aggregated per (user, song) as ``marts.user_song_interactions``
    does, so the graph equals the one the asset chain builds from the same world."""
    interactions = world.plays.group_by("user_id", "song_id").agg(
        pl.len().alias("play_count"),
        pl.col("completion_ratio").mean().alias("mean_completion"),
        pl.col("played_at").min().alias("first_played_at"),
        pl.col("played_at").max().alias("last_played_at"),
    )
    return build_listening_graph(
        GraphTables(world.users, world.songs, world.artists, world.genres, world.song_genres, interactions)
    )


def add_reverse_edges(data: HeteroData) -> HeteroData:
    """Add ``rev_*`` edges (listens keeps its edge attributes on the reverse too)."""
    return add_reverse(data, (LISTENS, BY, HAS), attributes=("edge_attr",))


def message_passing_graph(data: HeteroData, train_index: Tensor, heldout_index: Tensor | None = None) -> HeteroData:
    """The graph models see: every catalogue edge, but only the *training* listens edges (core's
    default view). Validation and test interactions never reach message passing, so neither
    training nor evaluation can read a held-out edge."""
    return training_view(data, SCHEMA, train_index)


def split_violations(data: HeteroData, splits: dict) -> dict[str, int]:
    """Per strategy: edges in no part or several, indices out of range, and held-out edges in the
    message-passing graph. All must be 0."""
    return core_split_violations(data, splits, SCHEMA)
