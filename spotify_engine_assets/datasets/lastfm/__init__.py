"""The Last.fm 2K chain: real listening data (HetRec 2011: users, artists, tags, friendships), the
fixed benchmark split of ``../shared/data`` with a validation cut of its training part, and the data
README's protocol (every artist ranked, training artists masked, ties to the lower artist id;
NDCG@20 primary and validation metric)."""

from ...core.dataset import Dataset
from ...core.evaluation.protocol import LinkPrediction
from ...core.registry import Registry
from ...core.storage.paths import configs_dir
from .graph import SCHEMA, message_passing_view, split_violations

STRATEGIES = ("fixed",)

DATASET = Dataset(
    name="lastfm",
    schema=SCHEMA,
    protocol=LinkPrediction(
        primary="ndcg@20",
        monitor="ndcg@20",
        ks=(10, 20),
        valid_ks=(10, 20),
        coverage_k=20,
        stable=True,
        chunk_size=512,
        clip=True,
        table=("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20"),
    ),
    registry=Registry("lastfm", configs_dir() / "lastfm" / "models.yaml", STRATEGIES),
    view=message_passing_view,
    split_violations=split_violations,
    description="Last.fm HetRec 2K: user-listens->artist, artist-tagged->tag, user-friend->user.",
)
