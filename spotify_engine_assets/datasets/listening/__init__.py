"""The listening chain: a generated music world (users, songs, artists, genres, listening
sessions), its listening graph, random and temporal splits, and link-prediction evaluation
(primary metric NDCG@10, early stopping on Recall@10)."""

from ...core.dataset import Dataset
from ...core.evaluation.protocol import LinkPrediction
from ...core.registry import Registry
from ...core.storage.paths import configs_dir
from .graph import SCHEMA, message_passing_graph, split_violations

STRATEGIES = ("random", "temporal")

DATASET = Dataset(
    name="listening",
    schema=SCHEMA,
    protocol=LinkPrediction(primary="ndcg@10", monitor="recall@10"),
    registry=Registry("listening", configs_dir() / "listening" / "models.yaml", STRATEGIES),
    view=message_passing_graph,
    split_violations=split_violations,
    description="Generated listening sessions: user-listens->song, song-by->artist, song-has->genre.",
)
