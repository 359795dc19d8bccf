"""The playlist chain: Kaggle "Spotify Playlists"-format files (or ones derived from the generated
world) streamed into DuckDB, the playlist graph (playlist, track, artist, genre), a position
holdout, and the RecSys Challenge 2018 protocol (R-precision with artist credit)."""

from ...core.dataset import Dataset
from ...core.registry import Registry
from ...core.storage.paths import configs_dir
from .graph import SCHEMA, message_passing_view, split_violations
from .metrics import RecSysChallenge

STRATEGIES = ("position",)

DATASET = Dataset(
    name="playlists",
    schema=SCHEMA,
    protocol=RecSysChallenge(),
    registry=Registry("playlists", configs_dir() / "playlists" / "models.yaml", STRATEGIES),
    view=message_passing_view,
    split_violations=split_violations,
    description="Playlist completion: playlist-contains->track, track-by->artist, artist-has->genre.",
)
