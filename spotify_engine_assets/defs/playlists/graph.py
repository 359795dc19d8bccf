"""The playlist chain's graph and split: the playlist ``HeteroData`` (playlist, track, artist,
genre) built from the ``playlists`` SQL models, and the position holdout."""

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.data.graph import from_payload, graph_summary, to_payload
from ...core.data.splits import labels_to_indices
from ...core.plots import frame_markdown
from ...core.storage.paths import source_version
from ...datasets import playlists
from ...datasets.playlists.graph import (
    CONTAINS,
    GraphSettings,
    PlaylistGraphError,
    SplitSettings,
    build_playlist_graph,
    split_labels,
)
from ..resources import DUCKDB_POOL, Warehouse

GROUP = "playlists_graph"
VERSION = source_version(playlists)


class PlaylistGraphConfig(dg.Config):
    min_playlist_size: int = Field(
        default=5, ge=1, description="Playlists with fewer tracks are dropped (also inside the k-core)."
    )
    min_track_playlists: int = Field(
        default=2, ge=1, description="k-core: every kept track is in at least this many kept playlists."
    )


@dg.asset(
    key=["playlists", "graph"],
    deps=[dg.AssetKey(["playlists", t]) for t in ("playlist_tracks", "tracks", "artist_genres")],
    group_name=GROUP,
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=VERSION,
)
def playlist_graph(
    context: dg.AssetExecutionContext, config: PlaylistGraphConfig, warehouse: Warehouse
) -> dg.Output[dict]:
    """PyG ``HeteroData`` with playlist, track, artist and genre nodes (``node_id`` keeps each
    warehouse key): playlist-contains->track (with position), track-by->artist,
    artist-has->genre and reverse edges, after the minimum-size and k-core filters."""
    settings = GraphSettings(config.min_playlist_size, config.min_track_playlists)
    tables = [warehouse.read_table(f"playlists.{name}") for name in ("playlist_tracks", "tracks", "artist_genres")]
    try:
        data, rounds = build_playlist_graph(*tables, settings)
    except PlaylistGraphError as error:
        raise dg.Failure(f"cannot build the playlist graph: {error}") from error
    return dg.Output(
        to_payload(data),
        metadata={**graph_summary(data), "kcore_rounds": dg.MetadataValue.md(frame_markdown(pl.DataFrame(rounds)))},
    )


class PlaylistSplitConfig(dg.Config):
    holdout: int = Field(
        default=2, ge=1, description="N: the last N tracks by position are test, the N before them validation."
    )
    min_train_tracks: int = Field(default=3, ge=1, description="Playlists shorter than 2N + this stay train-only.")


@dg.asset(
    key=["playlists", "split"],
    ins={"graph": dg.AssetIn(["playlists", "graph"])},
    group_name=GROUP,
    kinds={"pytorch"},
    code_version=VERSION,
)
def playlist_split(context: dg.AssetExecutionContext, config: PlaylistSplitConfig, graph: dict) -> dg.Output[dict]:
    """Train / validation / test indices into the contains edges (strategy ``position``): per
    playlist the last N tracks (by position) are test, the N before them validation; short
    playlists stay train-only."""
    settings = SplitSettings(config.holdout, config.min_train_tracks)
    data = from_payload(graph)
    split = labels_to_indices(
        split_labels(data[CONTAINS].edge_index, data[CONTAINS].position, data["playlist"].num_nodes, settings)
    )
    if split["test"].numel() == 0:
        raise dg.Failure(
            f"no playlist has the {2 * settings.holdout + settings.min_train_tracks} tracks needed for a held-out part "
            f"(holdout={settings.holdout}, min_train_tracks={settings.min_train_tracks}): nothing to evaluate"
        )
    evaluated = int(torch.unique(data[CONTAINS].edge_index[0, split["test"]]).numel())
    return dg.Output(
        {"settings": vars(settings), "position": split},
        metadata={**{part: int(index.numel()) for part, index in split.items()}, "playlists_with_heldout": evaluated},
    )


defs = dg.Definitions(assets=[playlist_graph, playlist_split])
