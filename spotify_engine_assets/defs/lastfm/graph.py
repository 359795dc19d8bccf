"""The Last.fm chain's graph and split (``defs/chain.data_assets``): every listening pair, tag
assignment and friendship of the ``lastfm`` marts as one ``HeteroData``, and the fixed split with
its validation cut."""

import polars as pl
from torch_geometric.data import HeteroData

from ...datasets.lastfm.data import build_dataset
from ...datasets.lastfm.graph import build_graph, fixed_split

MARTS = tuple(f"lastfm.{t}" for t in ("artists", "tags", "listens", "tag_assignments", "friendships", "split_pairs"))


def graph_from_marts(marts: dict[str, pl.DataFrame]) -> HeteroData:
    """Users, artists and tags with their original ids: every listening pair (play count, and which
    part of the fixed split it is in), every user-tag-artist assignment, the friendships."""
    marts = {table.split(".")[1]: frame for table, frame in marts.items()}
    raw = {
        "artists": marts["artists"].select(pl.col("artist_id").alias("id"), "name"),
        "user_artists": marts["listens"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("plays").alias("weight")
        ),
        "tags": marts["tags"].select(pl.col("tag_id").alias("tagID"), pl.col("tag").alias("tagValue")),
        "user_taggedartists": marts["tag_assignments"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("tag_id").alias("tagID")
        ),
        "user_friends": marts["friendships"].select(
            pl.col("user_id").alias("userID"), pl.col("friend_id").alias("friendID")
        ),
    }
    pairs = marts["split_pairs"].select(
        pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), "part"
    )
    split = {part: pairs.filter(pl.col("part") == part).drop("part") for part in ("train", "test")}
    return build_graph(build_dataset(raw, split))


def split_of(graph: HeteroData) -> dict:
    """The fixed split (strategy ``fixed``): test.tsv as ``test``, and train.tsv cut into ``train``
    and ``valid`` with the split's own recipe (seed 0); tuned configs make their final fit on both."""
    return fixed_split(graph)
