"""Last.fm HetRec 2K: the files, reading them, and indexing them with the fixed split.

Dagster-free. The data (see ``../shared/data/README.md``) lives outside the repository; its
folder is resolved relative to the repository root, never the current directory:
``$SPOTIFY_ENGINE_LASTFM_DIR`` or ``<repo>/../shared/data/lastfm2k`` for the raw files and
``$SPOTIFY_ENGINE_LASTFM_SPLIT_DIR`` or ``<repo>/../shared/data/lastfm2k_split_seed0`` for the
fixed benchmark split.

Indices: users, artists and tags are numbered by ascending original id (``user_ids[i]`` is
the original id of user ``i``). Every artist of ``artists.dat`` (17,632) is an item; every user
of ``user_artists.dat`` (1,892) is a user node.

The graph, the split, the validation cut and the leakage guard are in
:mod:`~spotify_engine_assets.datasets.lastfm.graph`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from ...core.data.graph import positions_in
from ...core.storage.paths import REPO_ROOT

DATA_DIR_ENV = "SPOTIFY_ENGINE_LASTFM_DIR"
SPLIT_DIR_ENV = "SPOTIFY_ENGINE_LASTFM_SPLIT_DIR"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# file -> (encoding, columns); the tags files are Latin-1, the rest UTF-8.
RAW_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "artists": ("utf-8", ("id", "name", "url", "pictureURL")),
    "user_artists": ("utf-8", ("userID", "artistID", "weight")),
    "tags": ("latin-1", ("tagID", "tagValue")),
    "user_taggedartists": ("latin-1", ("userID", "artistID", "tagID", "day", "month", "year")),
    "user_friends": ("utf-8", ("userID", "friendID")),
}
SPLIT_FILES = ("train", "test")
# The warehouse tables the lastfm_raw asset writes (sources of dbt_like_sql/lastfm/).
RAW_SCHEMA = "raw_lastfm"
RAW_TABLES = (*RAW_FILES, "split_train", "split_test")
LASTFM_SOURCES = tuple(f"{RAW_SCHEMA}.{table}" for table in RAW_TABLES)


def _configured_dir(env: str, default: Path) -> Path:
    configured = os.environ.get(env)
    return Path(configured).expanduser().resolve() if configured else default


def data_dir() -> Path:
    """The raw Last.fm 2K folder."""
    return _configured_dir(DATA_DIR_ENV, SHARED_DATA / "lastfm2k")


def split_dir() -> Path:
    """The fixed benchmark split folder (``train.tsv``, ``test.tsv``)."""
    return _configured_dir(SPLIT_DIR_ENV, SHARED_DATA / "lastfm2k_split_seed0")


def available(raw: Path | None = None, split: Path | None = None) -> bool:
    """Whether every raw and split file is present."""
    raw, split = raw or data_dir(), split or split_dir()
    return all((raw / f"{name}.dat").is_file() for name in RAW_FILES) and all(
        (split / f"{name}.tsv").is_file() for name in SPLIT_FILES
    )


def read_tsv(path: Path, encoding: str = "utf-8") -> pl.DataFrame:
    """A tab-separated file with a header, decoded with ``encoding``, every field kept as text
    except integer id columns (anything ending in ``ID``/``id`` or named weight/day/month/year)."""
    text = Path(path).read_bytes().decode(encoding)
    frame = pl.read_csv(
        io.StringIO(text), separator="\t", quote_char=None, infer_schema=False, truncate_ragged_lines=False
    )
    integer_columns = [c for c in frame.columns if c.lower().endswith("id") or c in ("weight", "day", "month", "year")]
    return frame.with_columns([pl.col(c).str.strip_chars().cast(pl.Int64) for c in integer_columns])


def read_raw(raw: Path | None = None) -> dict[str, pl.DataFrame]:
    """Every raw ``.dat`` file as a frame, checked against its expected header."""
    raw = raw or data_dir()
    frames = {}
    for name, (encoding, columns) in RAW_FILES.items():
        frame = read_tsv(raw / f"{name}.dat", encoding)
        if tuple(frame.columns) != columns:
            raise ValueError(f"{raw / name}.dat: expected columns {columns}, got {tuple(frame.columns)}")
        frames[name] = frame
    return frames


def read_split(split: Path | None = None) -> dict[str, pl.DataFrame]:
    """``train`` and ``test`` (userID, artistID) frames of the fixed split."""
    split = split or split_dir()
    return {name: read_tsv(split / f"{name}.tsv") for name in SPLIT_FILES}


# ------------------------------------------------------------------------------ dataset


@dataclass
class LastfmData:
    """Indexed Last.fm 2K: id maps, the listens with play counts, tags, friends and the split."""

    user_ids: np.ndarray
    artist_ids: np.ndarray
    tag_ids: np.ndarray
    listens: Tensor  # [2, E] (user, artist), every user_artists.dat pair
    listen_weight: Tensor  # [E] play counts
    tag_assignments: Tensor  # [3, A] (user, artist, tag)
    friends: Tensor  # [2, F] (user, user), symmetric, no self loops
    train: Tensor  # [2, N] fixed split, training pairs
    test: Tensor  # [2, M] fixed split, test pairs
    artist_names: list[str]
    tag_names: list[str]

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_artists(self) -> int:
        return len(self.artist_ids)

    @property
    def num_tags(self) -> int:
        return len(self.tag_ids)


def _indexer(ids: np.ndarray, what: str) -> Callable[[np.ndarray], np.ndarray]:
    def index(values: np.ndarray) -> np.ndarray:
        position, unknown = positions_in(ids, values)
        if unknown.any():
            raise ValueError(f"{int(unknown.sum())} unknown {what} ids, e.g. {values[unknown][:5].tolist()}")
        return position

    return index


def _pairs(frame: pl.DataFrame, user_index, artist_index) -> Tensor:
    users = user_index(frame["userID"].to_numpy())
    artists = artist_index(frame["artistID"].to_numpy())
    return torch.from_numpy(np.stack([users, artists]).astype(np.int64))


def build_dataset(raw: dict[str, pl.DataFrame], split: dict[str, pl.DataFrame]) -> LastfmData:
    """Index the raw frames and the split (frames as read by :func:`read_raw` / :func:`read_split`,
    or the same columns from the warehouse)."""
    artists, tags, user_artists = raw["artists"].sort("id"), raw["tags"].sort("tagID"), raw["user_artists"]
    user_ids = np.unique(user_artists["userID"].to_numpy())
    artist_ids, tag_ids = artists["id"].to_numpy(), tags["tagID"].to_numpy()
    user_index, artist_index = _indexer(user_ids, "user"), _indexer(artist_ids, "artist")
    tag_index = _indexer(tag_ids, "tag")

    # Tag assignments by users without listening data, or on artists outside artists.dat, cannot be nodes.
    tagged = raw["user_taggedartists"].filter(
        pl.col("userID").is_in(pl.Series(user_ids).implode())
        & pl.col("artistID").is_in(pl.Series(artist_ids).implode())
        & pl.col("tagID").is_in(pl.Series(tag_ids).implode())
    )
    columns = (("userID", user_index), ("artistID", artist_index), ("tagID", tag_index))
    assignments = np.stack([index(tagged[column].to_numpy()) for column, index in columns])
    friends = raw["user_friends"].filter(
        pl.col("userID").is_in(pl.Series(user_ids).implode()) & pl.col("friendID").is_in(pl.Series(user_ids).implode())
    )
    a, b = user_index(friends["userID"].to_numpy()), user_index(friends["friendID"].to_numpy())
    pairs = np.unique(np.concatenate([np.stack([a, b]), np.stack([b, a])], axis=1), axis=1)
    pairs = pairs[:, pairs[0] != pairs[1]]

    return LastfmData(
        user_ids=user_ids,
        artist_ids=artist_ids,
        tag_ids=tag_ids,
        listens=_pairs(user_artists, user_index, artist_index),
        listen_weight=torch.from_numpy(user_artists["weight"].to_numpy().astype(np.float32)),
        tag_assignments=torch.from_numpy(assignments.astype(np.int64)),
        friends=torch.from_numpy(pairs.astype(np.int64)),
        train=_pairs(split["train"], user_index, artist_index),
        test=_pairs(split["test"], user_index, artist_index),
        artist_names=artists["name"].to_list(),
        tag_names=tags["tagValue"].to_list(),
    )


def load_dataset(raw: Path | None = None, split: Path | None = None) -> LastfmData:
    """Read and index the raw files and the fixed split."""
    return build_dataset(read_raw(raw), read_split(split))
