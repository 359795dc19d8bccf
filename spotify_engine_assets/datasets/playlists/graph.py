"""The playlist graph, its filters, the playlist-completion split and its leakage guard.

Node types ``playlist``, ``track``, ``artist``, ``genre``; each keeps ``node_id`` (the warehouse
key of every index). Edge types::

    (playlist, contains, track)   position: the track's 0-based position in the playlist
    (track, by, artist)
    (artist, has, genre)

plus the reverse of each (``rev_contains``, ``rev_by``, ``rev_has``).

Filters (config): playlists with fewer than ``min_playlist_size`` tracks are dropped, then the
playlist-track graph is reduced to its k-core - every track in at least ``min_track_playlists``
playlists and every playlist still holding ``min_playlist_size`` tracks - iterating until stable.

Split: for each playlist, sorted by position, the last ``holdout`` tracks are test and the
``holdout`` before them validation; a playlist with fewer than ``2 * holdout + min_train_tracks``
tracks stays train-only. :func:`message_passing_view` keeps training edges only and computes the
only per-playlist aggregate (``num_train_tracks``) from them, so nothing a model sees about a
playlist comes from its held-out tracks; :func:`split_violations` verifies it.

:data:`SCHEMA` names these relations for the core.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import polars as pl
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ...core.data.graph import Schema, add_reverse
from ...core.data.splits import TEST, TRAIN, VALID
from ...core.dataset import split_violations as core_split_violations

CONTAINS = ("playlist", "contains", "track")
REV_CONTAINS = ("track", "rev_contains", "playlist")
TRACK_BY = ("track", "by", "artist")
ARTIST_HAS = ("artist", "has", "genre")
NODE_TYPES = ("playlist", "track", "artist", "genre")
SCHEMA = Schema(interaction=CONTAINS, categories={"artist": TRACK_BY}, context=(ARTIST_HAS,))


class PlaylistGraphError(ValueError):
    """The playlist tables or settings cannot form a graph or split (message says why)."""


class _PositiveSettings:
    def validate(self) -> None:
        """Every field must be >= 1."""
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise PlaylistGraphError(f"{field.name} must be >= 1, got {getattr(self, field.name)}")


@dataclass(frozen=True)
class GraphSettings(_PositiveSettings):
    min_playlist_size: int = 5
    min_track_playlists: int = 2
    max_rounds: int = 50


@dataclass(frozen=True)
class SplitSettings(_PositiveSettings):
    holdout: int = 2
    min_train_tracks: int = 3


def kcore_filter(edges: pl.DataFrame, settings: GraphSettings) -> tuple[pl.DataFrame, list[dict]]:
    """Drop small playlists, then iterate the k-core on (playlist_key, track_key) edges.

    Returns the kept edges and one log row per round (edges, playlists, tracks left).
    """
    rounds = []
    for round_ in range(1, settings.max_rounds + 1):
        before = edges.height
        sizes = edges.group_by("playlist_key").len()
        edges = edges.join(
            sizes.filter(pl.col("len") >= settings.min_playlist_size).select("playlist_key"), on="playlist_key"
        )
        degree = edges.group_by("track_key").len()
        edges = edges.join(
            degree.filter(pl.col("len") >= settings.min_track_playlists).select("track_key"), on="track_key"
        )
        playlists, tracks = edges["playlist_key"].n_unique(), edges["track_key"].n_unique()
        rounds.append({"round": round_, "edges": edges.height, "playlists": playlists, "tracks": tracks})
        if edges.height == before:
            break
    return edges, rounds


def _index(values: pl.Series, keys: np.ndarray) -> Tensor:
    return torch.from_numpy(np.searchsorted(keys, values.to_numpy())).long()


def build_playlist_graph(
    playlist_tracks: pl.DataFrame,
    tracks: pl.DataFrame,
    artist_genres: pl.DataFrame,
    settings: GraphSettings,
) -> tuple[HeteroData, list[dict]]:
    """Filter the playlist-track edges and assemble the ``HeteroData``.

    Args:
        playlist_tracks: playlist_key, track_key, position (``playlists.playlist_tracks``).
        tracks: track_key, artist_key (``playlists.tracks``).
        artist_genres: artist_key, genre (``playlists.artist_genres``; may be empty).
    """
    settings.validate()
    for frame, name, columns in (
        (playlist_tracks, "playlist_tracks", ("playlist_key", "track_key", "position")),
        (tracks, "tracks", ("track_key", "artist_key")),
        (artist_genres, "artist_genres", ("artist_key", "genre")),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise PlaylistGraphError(f"{name}: missing columns {missing}")
    edges, rounds = kcore_filter(playlist_tracks.select("playlist_key", "track_key", "position"), settings)
    if edges.height == 0:
        raise PlaylistGraphError(
            f"no playlist-track edge survives the filters (min_playlist_size={settings.min_playlist_size}, "
            f"min_track_playlists={settings.min_track_playlists}; {playlist_tracks.height} edges before)"
        )
    # positions renumbered 0..n-1 within each playlist, keeping their order
    edges = edges.sort("playlist_key", "position").with_columns(
        pl.int_range(pl.len()).over("playlist_key").alias("position")
    )
    playlist_ids = np.unique(edges["playlist_key"].to_numpy())
    track_ids = np.unique(edges["track_key"].to_numpy())
    track_artist = tracks.join(pl.DataFrame({"track_key": track_ids}), on="track_key", how="semi").sort("track_key")
    if track_artist.height != len(track_ids):
        raise PlaylistGraphError(
            f"tracks: {len(track_ids) - track_artist.height} playlist tracks have no row in tracks"
        )
    artist_ids = np.unique(track_artist["artist_key"].to_numpy())
    genres_kept = artist_genres.join(pl.DataFrame({"artist_key": artist_ids}), on="artist_key", how="semi")
    genre_ids = np.unique(genres_kept["genre"].to_numpy()) if genres_kept.height else np.array([], dtype=object)

    data = HeteroData()
    for node_type, ids in zip(NODE_TYPES, (playlist_ids, track_ids, artist_ids, genre_ids)):
        data[node_type].num_nodes = len(ids)
        data[node_type].node_id = [str(i) for i in ids]
    playlist_of_edge, track_of_edge = _index(edges["playlist_key"], playlist_ids), _index(edges["track_key"], track_ids)
    data[CONTAINS].edge_index = torch.stack([playlist_of_edge, track_of_edge])
    data[CONTAINS].position = torch.tensor(edges["position"].to_numpy(), dtype=torch.long)
    artist_of_track = _index(track_artist["artist_key"], artist_ids)
    data[TRACK_BY].edge_index = torch.stack([torch.arange(len(track_ids)), artist_of_track])
    data[ARTIST_HAS].edge_index = (
        torch.stack([_index(genres_kept["artist_key"], artist_ids), _index(genres_kept["genre"], genre_ids)])
        if genres_kept.height
        else torch.empty((2, 0), dtype=torch.long)
    )
    add_reverse(data, (CONTAINS, TRACK_BY, ARTIST_HAS), attributes=())
    return data, rounds


# --- split ------------------------------------------------------------------------------------


def split_labels(edge_index: Tensor, position: Tensor, num_playlists: int, settings: SplitSettings) -> Tensor:
    """TRAIN / VALID / TEST per contains edge: per playlist, the last ``holdout`` tracks by
    position are test, the ``holdout`` before them validation; short playlists stay train."""
    settings.validate()
    playlists = edge_index[0]
    length = torch.bincount(playlists, minlength=num_playlists)
    # rank of each edge counted from the end of its playlist (0 = last track)
    order = torch.argsort(playlists * (int(position.max()) + 1 if position.numel() else 1) + position)
    sorted_playlists = playlists[order]
    first = torch.searchsorted(sorted_playlists, sorted_playlists, right=False)
    rank_in_playlist = torch.arange(order.numel()) - first
    from_end = torch.empty_like(order)
    from_end[order] = length[sorted_playlists] - 1 - rank_in_playlist
    eligible = length[playlists] >= 2 * settings.holdout + settings.min_train_tracks
    labels = torch.full((edge_index.size(1),), TRAIN, dtype=torch.long)
    labels[eligible & (from_end < settings.holdout)] = TEST
    labels[eligible & (from_end >= settings.holdout) & (from_end < 2 * settings.holdout)] = VALID
    return labels


def message_passing_view(data: HeteroData, train_index: Tensor, heldout_index: Tensor | None = None) -> HeteroData:
    """The graph a model may see: training contains edges only (both directions), catalogue
    edges intact, and ``playlist.num_train_tracks`` computed from those training edges."""
    view = HeteroData()
    for t in NODE_TYPES:
        view[t].num_nodes = data[t].num_nodes
    edge_index = data[CONTAINS].edge_index[:, train_index]
    view[CONTAINS].edge_index = edge_index
    view[CONTAINS].position = data[CONTAINS].position[train_index]
    view[TRACK_BY].edge_index = data[TRACK_BY].edge_index
    view[ARTIST_HAS].edge_index = data[ARTIST_HAS].edge_index
    add_reverse(view, (CONTAINS, TRACK_BY, ARTIST_HAS), attributes=())
    view["playlist"].num_train_tracks = torch.bincount(edge_index[0], minlength=data["playlist"].num_nodes)
    return view


def split_violations(data: HeteroData, splits: dict) -> dict[str, int]:
    """Counts that must all be zero, per strategy: an edge in two parts or in none, held-out pairs
    in the view (either direction), playlists whose per-playlist aggregate differs from one computed
    from training edges, and playlists where a held-out track comes before a training track."""
    counts = core_split_violations(data, splits, SCHEMA, message_passing_view)
    for strategy in (s for s in splits if s != "settings"):
        split = splits[strategy]
        view = message_passing_view(data, split["train"])
        train_only = torch.bincount(data[CONTAINS].edge_index[0, split["train"]], minlength=data["playlist"].num_nodes)
        counts[f"{strategy}/aggregate_from_heldout"] = int((view["playlist"].num_train_tracks != train_only).sum())
        counts[f"{strategy}/heldout_before_train"] = heldout_position_violations(data, split)
    return counts


def heldout_position_violations(data: HeteroData, split: dict[str, Tensor]) -> int:
    """Playlists where a held-out track comes before a training track (must be zero)."""
    edge_index, position = data[CONTAINS].edge_index, data[CONTAINS].position
    n = data["playlist"].num_nodes
    max_train = torch.full((n,), -1, dtype=torch.long).scatter_reduce(
        0, edge_index[0, split["train"]], position[split["train"]], reduce="amax"
    )
    held = torch.cat([split["valid"], split["test"]])
    min_held = torch.full((n,), 1 << 40, dtype=torch.long).scatter_reduce(
        0, edge_index[0, held], position[held], reduce="amin"
    )
    return int((min_held <= max_train).sum())
