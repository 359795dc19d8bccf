"""Graph and splits: the ``HeteroData`` listening graph and the leakage-free split indices."""


import dagster as dg
import torch
from pydantic import Field

from ..lib import graph as graph_lib
from ..lib import splits as splits_lib
from ..lib.paths import source_version
from ..lib.graph import (
    LISTENS,
    GraphBuildError,
    GraphTables,
    build_listening_graph,
    from_payload,
    graph_summary,
    heldout_edges_in_graph,
    message_passing_graph,
    to_payload,
)
from ..lib.plots import count_bars, histogram, split_sizes
from ..lib.splits import SplitError, SplitSettings, check_partition, labels_to_indices, random_split, temporal_split
from .resources import DUCKDB_POOL, Warehouse

GRAPH_TABLES = {
    "users": "marts.users",
    "songs": "marts.songs",
    "artists": "marts.artists",
    "genres": "marts.genres",
    "song_genres": "marts.song_genres",
    "interactions": "marts.user_song_interactions",
}
SPLIT_STRATEGIES = ("random", "temporal")


@dg.asset(
    key="listening_graph",
    deps=[dg.AssetKey(t.split(".")) for t in GRAPH_TABLES.values()],
    group_name="graph",
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=source_version(graph_lib),
)
def listening_graph(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[dict]:
    """PyG ``HeteroData`` with user, song, artist and genre nodes; listens edges carry play count,
    mean completion and last play time; song-artist and song-genre edges; reverse edges; the
    original warehouse id of every node (``node_id``)."""
    tables = GraphTables(**{field: warehouse.read_table(table) for field, table in GRAPH_TABLES.items()})
    try:
        data = build_listening_graph(tables)
    except GraphBuildError as error:
        raise dg.Failure(f"cannot build the listening graph: {error}") from error
    summary = graph_summary(data)
    return dg.Output(to_payload(data), metadata={**summary, **_graph_plots(data, summary)})


def _graph_plots(data, summary: dict[str, int]) -> dict[str, dg.MetadataValue]:
    """Node and edge counts per type, and the listens-per-user and listens-per-song distributions."""
    users, songs = data[LISTENS].edge_index
    per_user = torch.bincount(users, minlength=data["user"].num_nodes).numpy()
    per_song = torch.bincount(songs, minlength=data["song"].num_nodes).numpy()
    return {
        "graph_sizes": dg.MetadataValue.md(count_bars(summary, "nodes and edges per type", log=True)),
        "listens_per_user": dg.MetadataValue.md(histogram(per_user, "distinct songs per user", "songs listened to")),
        "listens_per_song": dg.MetadataValue.md(histogram(per_song, "listeners per song", "distinct listeners", log=True)),
    }


class SplitConfig(dg.Config):
    valid_fraction: float = Field(default=0.15, description="Share of each user's interactions for validation.")
    test_fraction: float = Field(default=0.15, description="Share of each user's interactions for test.")
    min_interactions: int = Field(default=3, description="Users with fewer interactions stay train-only.")
    seed: int = Field(default=0, description="Seed of the random split.")


@dg.asset(key="interaction_splits", group_name="graph", kinds={"pytorch"}, code_version=source_version(splits_lib))
def interaction_splits(context: dg.AssetExecutionContext, config: SplitConfig, listening_graph: dict) -> dg.Output[dict]:
    """Train / validation / test indices into the listens edges, two strategies:
    ``random`` (per user, seeded 70/15/15) and ``temporal`` (each user's latest-discovered
    songs, by first play, go to validation and test)."""
    settings = SplitSettings(config.valid_fraction, config.test_fraction, config.min_interactions, config.seed)
    try:
        settings.validate()
    except SplitError as error:
        raise dg.Failure(f"invalid interaction_splits config: {error}") from error
    data = from_payload(listening_graph)
    users = data[LISTENS].edge_index[0].numpy()
    splits = {
        "random": labels_to_indices(random_split(users, settings)),
        "temporal": labels_to_indices(temporal_split(users, data[LISTENS].first_played.numpy(), settings)),
    }
    metadata = {f"{strategy}/{part}": int(index.numel()) for strategy, parts in splits.items() for part, index in parts.items()}
    sizes = {strategy: {part: int(index.numel()) for part, index in parts.items()} for strategy, parts in splits.items()}
    metadata["split_sizes"] = dg.MetadataValue.md(split_sizes(sizes, "interactions per part and strategy"))
    return dg.Output({"settings": settings.__dict__, **splits}, metadata=metadata)


@dg.asset_check(
    asset=interaction_splits,
    additional_ins={"listening_graph": dg.AssetIn("listening_graph")},
    blocking=True,
    description="Each strategy's parts are disjoint and cover every interaction exactly once.",
)
def splits_partition_interactions(interaction_splits: dict, listening_graph: dict) -> dg.AssetCheckResult:
    num_edges = int(listening_graph[LISTENS]["edge_index"].size(1))
    violations = {s: check_partition(interaction_splits[s], num_edges) for s in SPLIT_STRATEGIES}
    total = sum(sum(v.values()) for v in violations.values())
    return dg.AssetCheckResult(
        passed=total == 0,
        metadata={"interactions": num_edges, "violations": dg.MetadataValue.json(violations)},
    )


@dg.asset_check(
    asset=interaction_splits,
    additional_ins={"listening_graph": dg.AssetIn("listening_graph")},
    blocking=True,
    description="The message-passing graph used in training and evaluation holds no validation or test edge.",
)
def no_heldout_edges_in_message_passing(interaction_splits: dict, listening_graph: dict) -> dg.AssetCheckResult:
    data = from_payload(listening_graph)
    leaks = {}
    for strategy in SPLIT_STRATEGIES:
        parts = interaction_splits[strategy]
        view = message_passing_graph(data, parts["train"])
        leaks[strategy] = heldout_edges_in_graph(view, data, torch.cat([parts["valid"], parts["test"]]))
    return dg.AssetCheckResult(passed=sum(leaks.values()) == 0, metadata={"leaked_edges": dg.MetadataValue.json(leaks)})


defs = dg.Definitions(
    assets=[listening_graph, interaction_splits],
    asset_checks=[splits_partition_interactions, no_heldout_edges_in_message_passing],
)
