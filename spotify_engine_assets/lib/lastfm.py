"""Last.fm HetRec 2K: loading, the fixed split, the validation cut, the graph and the protocol.

Dagster-free. The data (see ``../shared/data/README.md``) lives outside the repository; its
folder is resolved relative to the repository root, never the current directory:
``$SPOTIFY_ENGINE_LASTFM_DIR`` or ``<repo>/../shared/data/lastfm2k`` for the raw files and
``$SPOTIFY_ENGINE_LASTFM_SPLIT_DIR`` or ``<repo>/../shared/data/lastfm2k_split_seed0`` for the
fixed benchmark split.

Indices: users, artists and tags are numbered by ascending original id (``user_ids[i]`` is
the original id of user ``i``). Every artist of ``artists.dat`` (17,632) is an item; every user
of ``user_artists.dat`` (1,892) is a user node.

Protocol (:func:`evaluate_scores`): for every user with a held-out artist, rank all artists,
masking the user's known (training) artists; Recall@K = hits / |held-out|; NDCG@K with binary
gains and the ideal DCG over ``min(K, |held-out|)``; means over those users. The metric values
come from :mod:`spotify_engine_assets.lib.metrics` (PyG's link-prediction metrics).

Leakage guard for side information: a user's tag assignment on an artist reveals that the user
knows the artist, so :func:`build_graph` drops every ``(user, tag, artist)`` assignment whose
``(user, artist)`` pair is held out (validation or test) before the artist--tag edges are counted.
Friendships carry no item information and are kept whole.
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
from torch_geometric.data import HeteroData

from .metrics import catalog_coverage, metric_collection, topk_scored
from .paths import REPO_ROOT

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

USER, ARTIST, TAG = "user", "artist", "tag"
LISTENS = (USER, "listens", ARTIST)
REV_LISTENS = (ARTIST, "rev_listens", USER)
TAGGED = (ARTIST, "tagged", TAG)
REV_TAGGED = (TAG, "rev_tagged", ARTIST)
FRIEND = (USER, "friend", USER)


def data_dir() -> Path:
    """The raw Last.fm 2K folder."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else SHARED_DATA / "lastfm2k"


def split_dir() -> Path:
    """The fixed benchmark split folder (``train.tsv``, ``test.tsv``)."""
    configured = os.environ.get(SPLIT_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else SHARED_DATA / "lastfm2k_split_seed0"


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
        position = np.searchsorted(ids, values)
        position = np.clip(position, 0, len(ids) - 1)
        unknown = ids[position] != values
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
    artists = raw["artists"].sort("id")
    tags = raw["tags"].sort("tagID")
    user_artists = raw["user_artists"]
    user_ids = np.unique(user_artists["userID"].to_numpy())
    artist_ids = artists["id"].to_numpy()
    tag_ids = tags["tagID"].to_numpy()
    user_index, artist_index = _indexer(user_ids, "user"), _indexer(artist_ids, "artist")
    tag_index = _indexer(tag_ids, "tag")

    listens = _pairs(user_artists, user_index, artist_index)
    weight = torch.from_numpy(user_artists["weight"].to_numpy().astype(np.float32))

    tagged = raw["user_taggedartists"]
    # Tag assignments by users without listening data, or on artists outside artists.dat, cannot be nodes.
    tagged = tagged.filter(
        pl.col("userID").is_in(pl.Series(user_ids).implode())
        & pl.col("artistID").is_in(pl.Series(artist_ids).implode())
        & pl.col("tagID").is_in(pl.Series(tag_ids).implode())
    )
    assignments = torch.from_numpy(
        np.stack(
            [
                user_index(tagged["userID"].to_numpy()),
                artist_index(tagged["artistID"].to_numpy()),
                tag_index(tagged["tagID"].to_numpy()),
            ]
        ).astype(np.int64)
    )

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
        listens=listens,
        listen_weight=weight,
        tag_assignments=assignments,
        friends=torch.from_numpy(pairs.astype(np.int64)),
        train=_pairs(split["train"], user_index, artist_index),
        test=_pairs(split["test"], user_index, artist_index),
        artist_names=artists["name"].to_list(),
        tag_names=tags["tagValue"].to_list(),
    )


def load_dataset(raw: Path | None = None, split: Path | None = None) -> LastfmData:
    """Read and index the raw files and the fixed split."""
    return build_dataset(read_raw(raw), read_split(split))


def validation_split(train: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cut a validation part from training pairs with the fixed split's own recipe.

    Users in ascending index with one ``numpy.random.default_rng(seed)``; each user's artists
    sorted and permuted; the first ``max(1, round(fraction * n))`` are held out, but a user keeps
    at least one training artist. Returns (fit, validation) pair tensors.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((train[1].numpy(), train[0].numpy()))
    users, artists = train[0].numpy()[order], train[1].numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    stops = np.r_[starts[1:], len(users)]
    held = np.zeros(len(users), dtype=bool)
    for start, stop in zip(starts, stops):
        n = stop - start
        if n < 2:
            continue
        take = min(max(1, round(fraction * n)), n - 1)
        chosen = rng.permutation(n)[:take]
        held[start + chosen] = True
    pairs = torch.from_numpy(np.stack([users, artists]).astype(np.int64))
    held_t = torch.from_numpy(held)
    return pairs[:, ~held_t], pairs[:, held_t]


# ------------------------------------------------------------------------------- graph


def listen_weights(data: LastfmData, pairs: Tensor) -> Tensor:
    """Play counts of ``pairs`` (looked up in ``user_artists.dat``)."""
    key = data.listens[0] * data.num_artists + data.listens[1]
    order = torch.argsort(key)
    wanted = pairs[0] * data.num_artists + pairs[1]
    position = torch.searchsorted(key[order], wanted).clamp(max=key.numel() - 1)
    if not bool((key[order][position] == wanted).all()):
        raise ValueError("some pairs are not listens of user_artists.dat")
    return data.listen_weight[order][position]


def build_graph(data: LastfmData, train: Tensor, heldout: Tensor | None = None) -> HeteroData:
    """The message-passing ``HeteroData`` for a training part.

    user -listens-> artist (training pairs only; ``edge_weight`` = log1p of the play count, ``edge_attr``
    its per-user standardized value), artist -tagged-> tag (assignment counts, from assignments whose
    (user, artist) pair is not held out), user -friend- user, and the reverse relations.
    """
    held = heldout if heldout is not None else torch.empty((2, 0), dtype=torch.long)
    graph = HeteroData()
    graph[USER].num_nodes = data.num_users
    graph[USER].node_id = torch.from_numpy(data.user_ids.astype(np.int64))
    graph[ARTIST].num_nodes = data.num_artists
    graph[ARTIST].node_id = torch.from_numpy(data.artist_ids.astype(np.int64))
    graph[TAG].num_nodes = data.num_tags
    graph[TAG].node_id = torch.from_numpy(data.tag_ids.astype(np.int64))

    weight = torch.log1p(listen_weights(data, train))
    graph[LISTENS].edge_index = train.clone()
    graph[LISTENS].edge_weight = weight
    graph[REV_LISTENS].edge_index = train.flip(0)
    graph[REV_LISTENS].edge_weight = weight

    assign = data.tag_assignments
    held_keys = held[0] * data.num_artists + held[1]
    keep = ~torch.isin(assign[0] * data.num_artists + assign[1], held_keys)
    at_key = assign[1, keep] * data.num_tags + assign[2, keep]
    keys, counts = torch.unique(at_key, return_counts=True)
    tagged = torch.stack([keys // data.num_tags, keys % data.num_tags])
    graph[TAGGED].edge_index = tagged
    graph[TAGGED].edge_weight = counts.float()
    graph[REV_TAGGED].edge_index = tagged.flip(0)
    graph[REV_TAGGED].edge_weight = counts.float()

    graph[FRIEND].edge_index = data.friends.clone()
    return graph


# ---------------------------------------------------------------------------- protocol

ScoreFn = Callable[[Tensor], Tensor]


def topk_from_scores(
    score_fn: ScoreFn, users: Tensor, known: Tensor, num_items: int, k: int, chunk_size: int = 512
) -> Tensor:
    """Top-``k`` items per user from a dense score function, never a ``known`` (user, item) pair;
    ties are broken toward the lower item index, as the reference protocol does."""
    return topk_scored(score_fn, users, known, num_items, k, chunk_size, stable=True)


def evaluate_topk(topk: Tensor, users: Tensor, heldout: Tensor, num_items: int, ks=(10, 20)) -> dict[str, float]:
    """Recall/NDCG at ``ks`` (plus Precision/HitRate@10) and coverage@20 of precomputed lists."""
    row_of_user = torch.full((int(max(users.max(), heldout[0].max())) + 1,), -1, dtype=torch.long)
    row_of_user[users] = torch.arange(users.numel())
    collection = metric_collection(num_items, tuple(ks))
    collection.update(topk, (row_of_user[heldout[0]], heldout[1]))
    values = {name: float(value) for name, value in collection.compute().items()}
    values["coverage@20"] = catalog_coverage(topk, num_items, k=20)
    values["users_evaluated"] = int(users.numel())
    return values


def evaluate_scores(score_fn: ScoreFn, known: Tensor, heldout: Tensor, num_items: int, ks=(10, 20)) -> dict[str, float]:
    """The protocol: rank every item for every user with a held-out pair, masking ``known`` pairs."""
    users = torch.unique(heldout[0])
    # a catalogue smaller than the longest list gives every user the whole (masked) catalogue
    topk = topk_from_scores(score_fn, users, known, num_items, min(max(max(ks), 20), num_items))
    return evaluate_topk(topk, users, heldout, num_items, ks)


def interaction_matrix(pairs: Tensor, num_users: int, num_items: int, values: Tensor | None = None):
    """A ``scipy.sparse.csr_matrix`` of (user, item) pairs (1.0, or ``values``)."""
    import scipy.sparse as sp

    data = np.ones(pairs.size(1), dtype=np.float32) if values is None else values.numpy().astype(np.float32)
    matrix = sp.csr_matrix((data, (pairs[0].numpy(), pairs[1].numpy())), shape=(num_users, num_items))
    matrix.sum_duplicates()
    return matrix
