"""The listening chain (:data:`CHAIN`) and its graph and splits: the ``HeteroData`` listening graph built from the
warehouse marts, the random and temporal split indices, and the users' segments for fairness."""

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.data.graph import from_payload, graph_summary, to_payload
from ...core.data.splits import labels_to_indices
from ...core.plots import count_bars, histogram, split_sizes
from ...core.storage.paths import source_version
from ...datasets import listening
from ...datasets.listening import DATASET
from ...datasets.listening.graph import LISTENS, GraphBuildError, GraphTables, build_listening_graph
from ...datasets.listening.splits import SplitError, SplitSettings, random_split, temporal_split
from ..chain import Chain
from ..resources import DUCKDB_POOL, Warehouse

CHAIN = Chain(DATASET, segments="listening/user_segments")
GRAPH_TABLES = {
    "users": "marts.users",
    "songs": "marts.songs",
    "artists": "marts.artists",
    "genres": "marts.genres",
    "song_genres": "marts.song_genres",
    "interactions": "marts.user_song_interactions",
}
VERSION = source_version(listening)


@CHAIN.asset(
    "graph",
    "graph",
    deps=[dg.AssetKey(t.split(".")) for t in GRAPH_TABLES.values()],
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=VERSION,
)
def listening_graph(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[dict]:
    """PyG ``HeteroData`` with user, song, artist and genre nodes; listens edges carry play count,
    mean completion and first and last play time; song-artist and song-genre edges; reverse edges;
    the original warehouse id of every node (``node_id``)."""
    tables = GraphTables(**{field: warehouse.read_table(table) for field, table in GRAPH_TABLES.items()})
    try:
        data = build_listening_graph(tables)
    except GraphBuildError as error:
        raise dg.Failure(f"cannot build the listening graph: {error}") from error
    summary = graph_summary(data)
    users, songs = data[LISTENS].edge_index
    per_user = torch.bincount(users, minlength=data["user"].num_nodes).numpy()
    per_song = torch.bincount(songs, minlength=data["song"].num_nodes).numpy()
    plots = {
        "graph_sizes": dg.MetadataValue.md(count_bars(summary, "nodes and edges per type", log=True)),
        "listens_per_user": dg.MetadataValue.md(histogram(per_user, "distinct songs per user", "songs listened to")),
        "listens_per_song": dg.MetadataValue.md(
            histogram(per_song, "listeners per song", "distinct listeners", log=True)
        ),
    }
    return dg.Output(to_payload(data), metadata={**summary, **plots})


class SplitConfig(dg.Config):
    valid_fraction: float = Field(
        default=0.15, gt=0.0, lt=1.0, description="Share of each user's interactions for validation."
    )
    test_fraction: float = Field(
        default=0.15, gt=0.0, lt=1.0, description="Share of each user's interactions for test."
    )
    min_interactions: int = Field(default=3, ge=3, description="Users with fewer interactions stay train-only.")
    seed: int = Field(default=0, description="Seed of the random split.")


@CHAIN.asset("split", "graph", ins=CHAIN.ins("graph"), kinds={"pytorch"}, code_version=VERSION)
def listening_split(context: dg.AssetExecutionContext, config: SplitConfig, graph: dict) -> dg.Output[dict]:
    """Train / validation / test indices into the listens edges, two strategies: ``random`` (per
    user, seeded 70/15/15) and ``temporal`` (each user's latest-discovered songs, by first play,
    go to validation and test)."""
    settings = SplitSettings(config.valid_fraction, config.test_fraction, config.min_interactions, config.seed)
    try:
        settings.validate()
    except SplitError as error:
        raise dg.Failure(f"invalid listening/split config: {error}") from error
    data = from_payload(graph)
    users = data[LISTENS].edge_index[0].numpy()
    splits = {
        "random": labels_to_indices(random_split(users, settings)),
        "temporal": labels_to_indices(temporal_split(users, data[LISTENS].first_played.numpy(), settings)),
    }
    sizes = {
        strategy: {part: int(index.numel()) for part, index in parts.items()} for strategy, parts in splits.items()
    }
    metadata = {f"{strategy}/{part}": size for strategy, parts in sizes.items() for part, size in parts.items()}
    metadata["split_sizes"] = dg.MetadataValue.md(split_sizes(sizes, "interactions per part and strategy"))
    return dg.Output({"settings": settings.__dict__, **splits}, metadata=metadata)


@CHAIN.asset(
    "user_segments",
    "graph",
    deps=[dg.AssetKey(["marts", "users"])],
    kinds={"duckdb", "polars"},
    pool=DUCKDB_POOL,
    code_version=VERSION,
)
def user_segments(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[pl.DataFrame]:
    """Each user's warehouse id and type (casual / regular / power) from ``marts.users``: the
    user-type slices of the metric reports' fairness tables."""
    frame = warehouse.read_table("marts.users").select("user_id", "user_type").sort("user_id")
    counts = frame.group_by("user_type").len().sort("user_type").iter_rows()
    return dg.Output(frame, metadata={"users": frame.height, **{f"users/{kind}": int(n) for kind, n in counts}})


defs = dg.Definitions(assets=[listening_graph, listening_split, user_segments])
