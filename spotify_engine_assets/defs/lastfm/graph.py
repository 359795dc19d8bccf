"""The Last.fm chain's graph and split: every listening pair, tag assignment and friendship of the
``lastfm`` marts as one ``HeteroData``, and the fixed split with its validation cut."""

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.data.graph import from_payload, graph_summary, to_payload
from ...core.storage.paths import source_version
from ...datasets import lastfm
from ...datasets.lastfm.data import build_dataset
from ...datasets.lastfm.graph import build_graph, fixed_split
from ..resources import DUCKDB_POOL, Warehouse

GROUP = "lastfm_graph"
MART_TABLES = ("artists", "tags", "listens", "tag_assignments", "friendships", "split_pairs")
VERSION = source_version(lastfm)


def frames_of(warehouse: Warehouse) -> tuple[dict, dict]:
    """The raw-file frames and the split frames rebuilt from the ``lastfm`` marts."""
    marts = {t: warehouse.read_table(f"lastfm.{t}") for t in MART_TABLES}
    raw = {
        "artists": marts["artists"].select(pl.col("artist_id").alias("id"), "name"),
        "user_artists": marts["listens"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("plays").alias("weight")
        ),
        "tags": marts["tags"].select(pl.col("tag_id").alias("tagID"), pl.col("tag").alias("tagValue")),
        "user_taggedartists": marts["tag_assignments"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("tag_id").alias("tagID")
        ),
        "user_friends": marts["friendships"].select(pl.col("user_id").alias("userID"), pl.col("friend_id").alias("friendID")),
    }
    pairs = marts["split_pairs"].select(pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), "part")
    return raw, {part: pairs.filter(pl.col("part") == part).drop("part") for part in ("train", "test")}


@dg.asset(
    key=["lastfm", "graph"],
    deps=[dg.AssetKey(["lastfm", t]) for t in MART_TABLES],
    group_name=GROUP,
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=VERSION,
)
def lastfm_graph(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[dict]:
    """Users, artists and tags with their original ids: every listening pair (play count, and which
    part of the fixed split it is in), every user-tag-artist assignment, the friendships."""
    try:
        graph = build_graph(build_dataset(*frames_of(warehouse)))
    except ValueError as error:
        raise dg.Failure(f"cannot build the Last.fm graph: {error}") from error
    return dg.Output(to_payload(graph), metadata=graph_summary(graph))


class LastfmSplitConfig(dg.Config):
    valid_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="Share of each user's train.tsv artists cut for validation.")
    seed: int = Field(default=0, description="Seed of the validation cut (the fixed split's own recipe).")


@dg.asset(key=["lastfm", "split"], ins={"graph": dg.AssetIn(["lastfm", "graph"])}, group_name=GROUP,
          kinds={"pytorch"}, code_version=VERSION)
def lastfm_split(context: dg.AssetExecutionContext, config: LastfmSplitConfig, graph: dict) -> dg.Output[dict]:
    """The fixed split (strategy ``fixed``): test.tsv as ``test``, and train.tsv cut into ``train``
    and ``valid`` with the split's own recipe; tuned configs make their final fit on both."""
    split = fixed_split(from_payload(graph), config.valid_fraction, config.seed)
    parts = split["fixed"]
    return dg.Output(split, metadata={**{part: int(index.numel()) for part, index in parts.items()},
                                      "train.tsv": int(parts["train"].numel() + parts["valid"].numel())})


defs = dg.Definitions(assets=[lastfm_graph, lastfm_split])
