"""Serving a materialized model: rank a catalogue from a compact serving index, map warehouse ids
to node indices (clear errors for unknown users, songs, genres and configs).

A :class:`ServingIndex` is what ranking needs and nothing more: the model's final user and item
embeddings, each user's training and known items (CSR), item popularity, the item-genre pairs,
the id maps, and the genre prior ``n0`` chosen on the validation split when the model was
trained. ``<chain>/trained_model`` stores it with the model (``artifact["serving"]``, see
:func:`serving_payload`), so ``spotify-engine recommend`` loads one file and imports torch only:
no graph library, no model code, no search of ``n0`` per call (:func:`load_index`).

A :class:`ModelBundle` is an index plus the model, the full graph and the message-passing view
the model was trained on (training interactions only): what explanations need
(:func:`load_bundle`), and what models without embeddings (item-item models, ItemKNN fusion)
score with.

Ranking (:func:`rank_songs`, :func:`rank_users`) mixes the model's score with a genre score under
an *adaptive genre weight* (see :mod:`.cold_start`): ``w = n0 / (n0 + n)`` with ``n`` the user's
number of training interactions, so new users lean on genres and active users on the
collaborative signal. ``n0 = 0`` ranks by the model's score alone. A chain without a genre
relation ranks by the model alone (``n0 = 0``; users without training interactions get
popularity).

Every ranking function takes a ``diversify`` option (:class:`.diversity.Diversify`): the top-k is
then re-ranked for artist and genre diversity (a per-artist cap, or MMR) from the pool of the
``max(50, 5k)`` best blended scores (:mod:`.diversity`), with each item's artist (``song_artist``,
stored in every serving index) and genres. Default: the plain ranking.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, ModelConfig, parse_config
from ..storage.artifacts import ArtifactNotFoundError, ArtifactStore, first_non_finite, load_torch
from .diversity import Diversify, ItemSimilarity, rerank_scores
from .scores import adaptive_weights, blend, genre_matrix_of, genre_profile_of_songs, genre_scores

if TYPE_CHECKING:  # the graph libraries are imported only where a graph is built
    import polars as pl
    from torch_geometric.data import HeteroData

    from ..data.graph import Schema
    from ..dataset import Dataset
    from ..models import Recommender

DEFAULT_GENRE_PRIOR = 5.0
SERVING_FORMAT = 1
NO_SERVING_INDEX = (
    "default: the artifact was materialized before n0 was stored with the model; "
    "re-materialize the partition to choose n0 on validation"
)
MAX_BATCH_CELLS = 1 << 22  # users x items scored at once by rank_users' callers (16 MiB of float32)


class UnknownIdError(LookupError):
    """A user, song, genre or model config the command line or library was asked about does not exist."""

    def __str__(self) -> str:  # LookupError's str() would quote the message
        return str(self.args[0])


def id_error(kind: str, value, known: list, presorted: bool = False) -> UnknownIdError:
    """An error naming the unknown id and listing what exists (a sample and the count when long)."""
    known = list(known) if presorted else sorted(known)
    span = (
        f" (ids {known[0]}..{known[-1]})"
        if known and len(known) > 10 and all(isinstance(k, int) for k in known)
        else ""
    )
    sample = ", ".join(str(v) for v in known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
    return UnknownIdError(f"unknown {kind} {value!r}; {len(known)} {kind}s exist{span}: {sample}")


def _as_list(ids) -> list:
    return ids.tolist() if isinstance(ids, Tensor) else list(ids)


@dataclass
class Catalog:
    """Display names by node index (warehouse titles and names when available)."""

    song_title: list[str]
    song_artist: list[int]  # artist node index of every song (-1: none)
    artist_name: list[str]
    genre_name: list[str]

    @classmethod
    def build(cls, song_ids, artist_ids, genre_ids, song_artist, warehouse: Path | None = None) -> Catalog:
        """Names from the warehouse's ``marts`` tables where it has them (read-only), else ``song <id>`` etc."""
        song_ids, artist_ids, genre_ids = _as_list(song_ids), _as_list(artist_ids), _as_list(genre_ids)
        titles = {i: f"song {i}" for i in song_ids}
        artists = {i: f"artist {i}" for i in artist_ids}
        genres = {i: f"genre {i}" for i in genre_ids}
        if warehouse is not None and Path(warehouse).exists():
            _warehouse_names(Path(warehouse), {"songs": titles, "artists": artists, "genres": genres})
        return cls(
            [titles[i] for i in song_ids],
            _as_list(song_artist),
            [artists[i] for i in artist_ids],
            [genres[i] for i in genre_ids],
        )

    @classmethod
    def from_graph(cls, data: HeteroData, schema: Schema, warehouse: Path | None = None) -> Catalog:
        by, has = schema.category("artist"), schema.category("genre")
        if by is None or has is None:
            raise ConfigError(
                f"serving needs item-artist and item-genre relations; the graph has {sorted(schema.categories)}"
            )
        return cls.build(
            _node_ids(data, schema.item),
            _node_ids(data, by[2]),
            _node_ids(data, has[2]),
            _song_artist(data, schema),
            warehouse,
        )


def _warehouse_names(path: Path, names: dict[str, dict]) -> None:
    """Fill ``names`` (per marts table: id -> fallback name) from the marts tables, read-only; ids
    missing there keep their fallback."""
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return  # held by a writer right now: ids are shown instead
    try:
        for table, target in names.items():
            column = "title" if table == "songs" else "name"
            try:
                rows = con.sql(f'SELECT {table[:-1]}_id, {column} FROM "marts"."{table}"').fetchall()
            except duckdb.Error:
                continue
            target.update({int(k): str(v) for k, v in rows if int(k) in target})
    finally:
        con.close()


def _node_ids(data: HeteroData, node_type: str | None):
    """The warehouse ids of a node type (a tensor, or a list of strings for string ids); none for no type."""
    if node_type is None:
        return torch.empty(0, dtype=torch.long)
    store = data[node_type]
    return store.node_id if "node_id" in store else torch.arange(int(store.num_nodes))


def _song_artist(data: HeteroData, schema: Schema) -> Tensor:
    song_artist = torch.full((int(data[schema.item].num_nodes),), -1, dtype=torch.long)
    by = schema.category("artist")
    if by is not None:
        song_artist[data[by].edge_index[0]] = data[by].edge_index[1]
    return song_artist


def _by_user(pairs: Tensor, num_users: int) -> tuple[Tensor, Tensor]:
    """``[2, E]`` (user, item) pairs as CSR: ``(indptr [users + 1], items)``, a user's items in pair order."""
    indptr = torch.zeros(num_users + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(pairs[0], minlength=num_users), 0)
    return indptr, pairs[1, torch.argsort(pairs[0], stable=True)]


def _gather(indptr: Tensor, values: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """The CSR rows of ``users``: ``(row in users, value)`` pairs."""
    starts, counts = indptr[users], indptr[users + 1] - indptr[users]
    rows = torch.repeat_interleave(torch.arange(users.numel()), counts)
    offsets = torch.cumsum(counts, 0) - counts
    return rows, values[torch.arange(int(counts.sum())) - offsets[rows] + starts[rows]]


_ARRAYS = (
    "user_ids",
    "song_ids",
    "artist_ids",
    "genre_ids",
    "song_artist",
    "song_genres",
    "user_emb",
    "song_emb",
    "popularity",
    "train_indptr",
    "train_items",
    "known_indptr",
    "known_items",
)


@dataclass(kw_only=True)
class ServingIndex:
    """What ranking a chain's catalogue needs (module docstring). Items are called songs here, as in
    the listening chain; ``item_type`` names them in tables (``song``, ``track``, ``artist``)."""

    config: ModelConfig
    user_ids: Tensor | list  # warehouse id of every user node
    song_ids: Tensor | list
    artist_ids: Tensor | list
    genre_ids: Tensor | list
    song_artist: Tensor  # artist node index of every song (-1: none)
    song_genres: Tensor  # [2, E] (song, genre) node index pairs of the message-passing graph
    user_emb: Tensor | None  # the model's final embeddings; None where the model scores without them
    song_emb: Tensor | None
    popularity: Tensor  # training interactions per song
    train_indptr: Tensor  # CSR of each user's training songs (what the model saw)
    train_items: Tensor
    known_indptr: Tensor  # CSR of each user's known songs (train, validation and test)
    known_items: Tensor
    n0: float  # the genre prior of the adaptive weight
    n0_scores: dict[float, float] = field(default_factory=dict)  # validation NDCG@10 per n0 tried
    n0_source: str = "validation"
    user_type: str = "user"
    item_type: str = "song"
    warehouse: Path | None = None  # where names come from (the catalogue is built on first use)
    catalog: Catalog | None = None
    genre_matrix: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.genre_matrix = genre_matrix_of(self.song_genres, self.num_songs, len(self.genre_ids))

    @classmethod
    def from_graph(
        cls,
        config: ModelConfig,
        schema: Schema,
        data: HeteroData,
        view: HeteroData,
        factors,
        /,
        *,
        valid_pairs: Tensor | None = None,
        n0: float | None = None,
        n0_source: str = "given",
        n0_scores: dict | None = None,
        **extra,
    ) -> ServingIndex:
        """The index of a model prepared on ``view`` (``factors`` = its ``factors()``). ``n0``: given, or
        chosen on ``valid_pairs`` (:func:`.cold_start.tune_genre_prior`, once), else the default;
        0 where the chain has no genre relation."""
        has, interaction = schema.category("genre"), schema.interaction
        num_users, num_songs = int(data[schema.user].num_nodes), int(data[schema.item].num_nodes)
        if factors is not None and getattr(config, "fusion", None) is None:
            user_emb, song_emb = (f.detach().cpu() for f in factors)  # serving runs on the CPU
        else:  # no embeddings, or fused scores: the model itself scores (ModelBundle)
            user_emb = song_emb = None
        if n0 is None:
            if has is None:
                n0, n0_source = 0.0, "model only: the graph has no genre relation"
            elif valid_pairs is not None and valid_pairs.numel() and user_emb is not None:
                from .cold_start import tune_genre_prior

                n0, n0_scores = tune_genre_prior(user_emb, song_emb, view, valid_pairs, schema)
                n0_source = "validation"
            else:
                n0, n0_source = (
                    DEFAULT_GENRE_PRIOR,
                    "default: no validation pairs or no model embeddings to choose it on",
                )
        train_indptr, train_items = _by_user(view[interaction].edge_index, num_users)
        known_indptr, known_items = _by_user(data[interaction].edge_index, num_users)
        return cls(
            config=config,
            user_ids=_node_ids(data, schema.user),
            song_ids=_node_ids(data, schema.item),
            artist_ids=_node_ids(data, (schema.category("artist") or (None, None, None))[2]),
            genre_ids=_node_ids(data, has[2] if has else None),
            song_artist=_song_artist(data, schema),
            song_genres=view[has].edge_index if has else torch.empty(2, 0, dtype=torch.long),
            user_emb=user_emb,
            song_emb=song_emb,
            popularity=torch.bincount(view[interaction].edge_index[1], minlength=num_songs).float(),
            train_indptr=train_indptr,
            train_items=train_items,
            known_indptr=known_indptr,
            known_items=known_items,
            n0=float(n0),
            n0_scores=dict(n0_scores or {}),
            n0_source=n0_source,
            user_type=schema.user,
            item_type=schema.item,
            **extra,
        )

    def to_payload(self) -> dict:
        """Tensors and plain values only (``torch.load(weights_only=True)`` reads it back)."""
        payload = {name: getattr(self, name) for name in _ARRAYS}
        payload.update(
            format=SERVING_FORMAT,
            genre_prior=self.n0,
            genre_prior_source=self.n0_source,
            genre_prior_validation_ndcg={str(k): float(v) for k, v in self.n0_scores.items()},
            user_type=self.user_type,
            item_type=self.item_type,
        )
        return payload

    @classmethod
    def from_payload(cls, payload: dict, config: ModelConfig, warehouse: Path | None = None) -> ServingIndex:
        if payload.get("format") != SERVING_FORMAT:
            raise ConfigError(
                f"serving index of trained_model[{config.name}] has format {payload.get('format')!r}, "
                f"this code reads {SERVING_FORMAT}; re-materialize it"
            )
        return cls(
            config=config,
            **{name: payload[name] for name in _ARRAYS},
            n0=float(payload["genre_prior"]),
            n0_scores={float(k): v for k, v in payload["genre_prior_validation_ndcg"].items()},
            n0_source=payload["genre_prior_source"],
            user_type=payload["user_type"],
            item_type=payload["item_type"],
            warehouse=warehouse,
        )

    @property
    def num_songs(self) -> int:
        return len(self.song_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def popularity_only(self) -> bool:
        """Most-popular: every user's model score is the songs' popularity."""
        return self.config.model == "most_popular"

    @functools.cached_property
    def similarity(self) -> ItemSimilarity:
        """Item-item artist and genre similarity, what the diversity re-rankers use."""
        return ItemSimilarity(self.song_artist, self.genre_matrix)

    def names(self) -> Catalog:
        """Display names (built from the warehouse on first use)."""
        if self.catalog is None:
            self.catalog = Catalog.build(
                self.song_ids, self.artist_ids, self.genre_ids, self.song_artist, self.warehouse
            )
        return self.catalog

    # ---------------------------------------------------------------- id maps
    @functools.cached_property
    def _index(self) -> dict[str, dict[int, int]]:
        return {
            kind: {int(v): i for i, v in enumerate(_as_list(ids))}
            for kind, ids in (("user", self.user_ids), ("song", self.song_ids), ("genre", self.genre_ids))
        }

    def user_index(self, user_id) -> int:
        return _lookup("user", user_id, self._index["user"])

    def song_index(self, song_id) -> int:
        return _lookup("song", song_id, self._index["song"])

    def genre_index(self, genre) -> int:
        """A genre by warehouse id or (case-insensitive) name."""
        try:
            return self._index["genre"][int(genre)]
        except (KeyError, ValueError, TypeError):
            pass
        names = {name.lower(): i for i, name in enumerate(self.names().genre_name)}
        if str(genre).lower() in names:
            return names[str(genre).lower()]
        listing = [f"{gid} ({self.names().genre_name[i]})" for gid, i in sorted(self._index["genre"].items())]
        raise id_error("genre", genre, listing, presorted=True)

    def user_id(self, index: int):
        value = self.user_ids[index]
        return int(value) if isinstance(value, Tensor) else value

    def song_id(self, index: int):
        value = self.song_ids[index]
        return int(value) if isinstance(value, Tensor) else value

    # ---------------------------------------------------------------- interactions
    def known_songs(self, user: int) -> Tensor:
        """Every song the user has an interaction with (train, validation and test)."""
        return self.known_songs_of(torch.tensor([user]))[1]

    def training_songs(self, user: int) -> Tensor:
        """The user's songs in the message-passing graph (what the model saw)."""
        return _gather(self.train_indptr, self.train_items, torch.tensor([user]))[1]

    def known_songs_of(self, users: Tensor) -> tuple[Tensor, Tensor]:
        return _gather(self.known_indptr, self.known_items, users)

    def user_scores(self, users: Tensor) -> Tensor | None:
        """The model's ``[len(users), songs]`` scores (None: the index holds no embeddings, see ModelBundle)."""
        if self.user_emb is None:
            return None
        return self.user_emb[users] @ self.song_emb.T

    def fold_in_scores(self, songs: Tensor) -> Tensor | None:
        """A new user's model scores from the mean of the model's embeddings of their songs."""
        if self.popularity_only:
            return self.popularity.clone()
        if self.song_emb is None or not songs.numel():
            return None
        return self.song_emb @ self.song_emb[songs].mean(0)


def _lookup(kind: str, value, index: dict[int, int]) -> int:
    try:
        return index[int(value)]
    except (KeyError, ValueError, TypeError):
        raise id_error(kind, value, list(index)) from None


@dataclass(kw_only=True)
class ModelBundle(ServingIndex):
    """An index with the model, the full graph (every known interaction) and the message-passing
    view the model was trained on: what explanations need."""

    model: Recommender
    schema: Schema
    data: HeteroData
    view: HeteroData

    def __post_init__(self) -> None:
        super().__post_init__()
        self.names()  # explanations read ``catalog`` directly

    @classmethod
    def of(
        cls, config: ModelConfig, model: Recommender, schema: Schema, data: HeteroData, view: HeteroData, **options
    ) -> ModelBundle:
        """The bundle of a model prepared on ``view``; ``options`` as :meth:`ServingIndex.from_graph`."""
        return cls.from_graph(
            config, schema, data, view, model.factors(), model=model, schema=schema, data=data, view=view, **options
        )

    @classmethod
    def with_model(
        cls, index: ServingIndex, model: Recommender, schema: Schema, data: HeteroData, view: HeteroData
    ) -> ModelBundle:
        """A stored index with its model (loaded from the same artifact) and graph."""
        kept = {f.name: getattr(index, f.name) for f in fields(ServingIndex) if f.init}
        return cls(**kept, model=model, schema=schema, data=data, view=view)

    def user_scores(self, users: Tensor) -> Tensor:
        scores = super().user_scores(users)
        return self.model.score(users) if scores is None else scores


def available_configs(store: ArtifactStore, chain: str, registry: list[str]) -> list[str]:
    """Configs of ``registry`` with a materialized ``<chain>/trained_model`` partition."""
    return [name for name in registry if (store.slot([chain, "trained_model"], name) / "CURRENT").exists()]


def load_index(lake: Path, chain: str, config_name: str) -> ServingIndex | None:
    """The serving index stored with the current ``<chain>/trained_model[config_name]`` of a data
    lake folder (names from its warehouse). None when the partition is not materialized, was
    materialized before serving indices were stored, or its model scores without embeddings:
    :func:`load_bundle` serves those (and names an unknown config)."""
    store = ArtifactStore(Path(lake) / "artifacts")
    try:
        artifact = load_torch(store.current([chain, "trained_model"], config_name) / "data.pt")
    except ArtifactNotFoundError:
        return None
    payload = artifact.get("serving")
    if payload is None or payload.get("user_emb") is None:
        return None
    return ServingIndex.from_payload(payload, _artifact_config(artifact), Path(lake) / "warehouse.duckdb")


def _artifact_config(artifact: dict) -> ModelConfig:
    try:
        config = parse_config(artifact["config"])
    except Exception as error:
        raise ConfigError(f"trained_model holds an invalid config: {error}") from error
    non_finite = first_non_finite(artifact.get("state"), "state")
    if non_finite is not None:  # a diverged model stored before training checked its loss: never served
        raise ConfigError(
            f"trained_model[{config.name}] has non-finite weights ({non_finite}); it cannot serve - "
            f"retrain it (spotify-engine materialize --configs {config.name})"
        )
    return config


def load_bundle(lake: Path, dataset: Dataset, config_name: str) -> ModelBundle:
    """Load a materialized ``<chain>/trained_model`` partition and its graph from a data lake folder.

    Raises :class:`UnknownIdError` for a config that is not in the registry or not materialized
    (listing both), :class:`ArtifactNotFoundError` when the graph is missing.
    """
    store, chain = ArtifactStore(Path(lake) / "artifacts"), dataset.name
    registry = sorted(dataset.registry.full(Path(lake)))  # the registry file and the lake's promoted configs
    if config_name not in registry:
        raise UnknownIdError(
            f"unknown {chain} model config {config_name!r}; configs in the registry: {', '.join(registry)} "
            f"(materialized: {', '.join(available_configs(store, chain, registry)) or 'none'})"
        )
    try:
        artifact = load_torch(store.current([chain, "trained_model"], config_name) / "data.pt")
    except ArtifactNotFoundError:
        raise UnknownIdError(
            f"model config {config_name!r} has no materialized {chain}/trained_model in {lake}; materialized: "
            f"{', '.join(available_configs(store, chain, registry)) or 'none'} (run: spotify-engine materialize --configs {config_name})"
        ) from None
    graph = load_torch(store.current([chain, "graph"]) / "data.pt")
    splits = load_torch(store.current([chain, "split"]) / "data.pt")
    return bundle_from(dataset, artifact, graph, splits, Path(lake) / "warehouse.duckdb")


def bundle_from(
    dataset: Dataset, artifact: dict, graph_payload: dict, splits: dict, warehouse: Path | None = None
) -> ModelBundle:
    """A bundle from the loaded ``trained_model``, ``graph`` and ``split`` values of a chain; ``n0``
    is the one stored with the model (the default, said in ``n0_source``, for an artifact from
    before it was stored: never searched here)."""
    from ..data.graph import from_payload

    data = from_payload(graph_payload)
    config = _artifact_config(artifact)
    split = splits[config.split]
    stored, schema = artifact.get("serving"), dataset.schema
    # a graph model whose embeddings are stored is not run here: explanations run their own forward pass
    embedded = stored is not None and stored.get("user_emb") is not None and config.trainable
    try:
        if embedded:
            model, view = dataset.build(config, data), dataset.view_for(data, split, config)
            model.load_state_dict(artifact["state"])
            model.eval()
        else:
            model, view = dataset.load(config, data, split, artifact["state"])
        if stored is not None and (len(stored["user_ids"]), len(stored["song_ids"])) != (
            int(data[schema.user].num_nodes),
            int(data[schema.item].num_nodes),
        ):
            raise ValueError("its serving index has other users or items than the graph")
    except (RuntimeError, KeyError, ValueError) as error:
        raise ConfigError(
            f"trained_model[{config.name}] does not fit the current model code or graph ({error}); "
            f"re-materialize it: spotify-engine materialize --configs {config.name}"
        ) from error
    if stored is not None:
        return ModelBundle.with_model(ServingIndex.from_payload(stored, config, warehouse), model, schema, data, view)
    prior = DEFAULT_GENRE_PRIOR if schema.category("genre") else 0.0
    return ModelBundle.of(config, model, schema, data, view, warehouse=warehouse, n0=prior, n0_source=NO_SERVING_INDEX)


def serving_payload(
    dataset: Dataset, config: ModelConfig, model: Recommender, data: HeteroData, split: dict, view: HeteroData
) -> dict:
    """The serving index of a freshly fitted model (prepared on ``view``), ``n0`` chosen once on the
    split's validation pairs: what ``<chain>/trained_model`` stores as ``artifact["serving"]``."""
    index = ServingIndex.from_graph(
        config, dataset.schema, data, view, model.factors(), valid_pairs=dataset.pairs(data, split["valid"])
    )
    return index.to_payload()


@dataclass
class Ranking:
    """Top-k songs for one user, with the parts of each score."""

    songs: Tensor  # song node indices, best first
    score: Tensor  # blended score used for ranking
    model_score: Tensor  # the model's own score (dot product); NaN where there is none
    genre_score: Tensor  # genre-profile score
    genre_weight: float  # w = n0 / (n0 + n)
    interactions: int  # n
    genre_prior: float  # n0
    diversify: Diversify = field(default_factory=Diversify)  # the re-ranker of the list


@dataclass
class Rankings:
    """Top-k songs of many users: ``[users, k]`` tensors; ``valid`` is False past a user's unseen songs."""

    songs: Tensor
    score: Tensor
    model_score: Tensor
    genre_score: Tensor
    valid: Tensor
    genre_weight: Tensor  # [users]
    interactions: Tensor  # [users]
    genre_prior: float
    diversify: Diversify = field(default_factory=Diversify)

    def row(self, i: int) -> Ranking:
        keep = self.valid[i]
        return Ranking(
            self.songs[i][keep],
            self.score[i][keep],
            self.model_score[i][keep],
            self.genre_score[i][keep],
            float(self.genre_weight[i]),
            int(self.interactions[i]),
            self.genre_prior,
            self.diversify,
        )


def _rank(
    index: ServingIndex,
    model: Tensor | None,
    profiles: Tensor,
    interactions: Tensor,
    exclude: tuple[Tensor, Tensor],
    k: int,
    n0: float,
    diversify: Diversify | None = None,
) -> Rankings:
    """Blend, mask ``exclude`` (row, song) pairs, take the top ``k`` of every row (re-ranked from a
    pool of the best by ``diversify``, if any)."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    genre = genre_scores(index.genre_matrix, index.popularity, profiles)
    if model is None:
        model = torch.full_like(genre, float("nan"))
    has_model = ~torch.isnan(model).all(1)
    weight = torch.where(has_model, adaptive_weights(interactions, n0), torch.ones(interactions.numel()))
    score = blend(torch.where(has_model.unsqueeze(1), model, torch.zeros_like(model)), genre, weight)
    score[exclude] = float("-inf")
    diversify = diversify or Diversify()
    if diversify.active:
        songs, valid = rerank_scores(score, k, diversify, index.similarity)
    else:
        top = score.topk(min(k, index.num_songs), dim=1)
        songs, valid = top.indices, torch.isfinite(top.values)
    gather = lambda values: values.gather(1, songs)  # noqa: E731
    return Rankings(songs, gather(score), gather(model), gather(genre), valid, weight, interactions, n0, diversify)


def rank_users(
    index: ServingIndex, users: Tensor, k: int, genre_prior: float | None = None, diversify: Diversify | None = None
) -> Rankings:
    """Top-``k`` songs of known users (node indices), batched: the model's score blended with the
    genre score of each user's training songs, every known song masked. ``genre_prior`` is ``n0``
    (``None``: the index's, chosen on validation when the model was trained); ``diversify`` a
    re-ranker (module docstring)."""
    n0 = index.n0 if genre_prior is None else float(genre_prior)
    rows, songs = _gather(index.train_indptr, index.train_items, users)
    profiles = torch.zeros(users.numel(), index.genre_matrix.size(1)).index_add_(0, rows, index.genre_matrix[songs])
    profiles = profiles / profiles.sum(1, keepdim=True).clamp(min=1e-12)
    interactions = index.train_indptr[users + 1] - index.train_indptr[users]
    return _rank(index, index.user_scores(users), profiles, interactions, index.known_songs_of(users), k, n0, diversify)


def rank_songs(
    index: ServingIndex,
    k: int,
    *,
    user: int | None = None,
    songs: list[int] | None = None,
    genres: list[int] | None = None,
    genre_prior: float | None = None,
    diversify: Diversify | None = None,
) -> Ranking:
    """Top-``k`` songs for a known user (node index) or a new user given by songs and/or genres.

    A known user is scored by the model (:func:`rank_users`), new users by the mean of the
    model's embeddings of their songs (fold-in); the genre score comes from the genre profile of
    the user's training songs (or given songs, or given genres). Songs the user already played
    (every known interaction) or named are never recommended. ``genre_prior`` is ``n0``
    (``None``: the index's, chosen on validation when the model was trained); ``diversify`` a
    re-ranker of the list (module docstring).
    """
    if user is None and not songs and not genres:
        raise ValueError("give a user, or a new user's songs and/or genres")
    if user is not None:
        return rank_users(index, torch.tensor([user]), k, genre_prior, diversify).row(0)
    n0 = index.n0 if genre_prior is None else float(genre_prior)
    given = torch.tensor(sorted(set(songs or [])), dtype=torch.long)
    profile = genre_profile_of_songs(index.genre_matrix, given)
    if genres:
        stated = torch.zeros_like(profile)
        stated[torch.tensor(sorted(set(genres)))] = 1.0
        profile = profile + stated / stated.sum()
        profile = profile / profile.sum()
    model = index.fold_in_scores(given)
    exclude = (torch.zeros(given.numel(), dtype=torch.long), given)
    rankings = _rank(
        index,
        None if model is None else model.unsqueeze(0),
        profile.unsqueeze(0),
        torch.tensor([given.numel()]),
        exclude,
        k,
        n0,
        diversify,
    )
    return rankings.row(0)


def recommendation_frame(
    index: ServingIndex,
    k: int,
    genre_prior: float | None = None,
    batch_cells: int = MAX_BATCH_CELLS,
    diversify: Diversify | None = None,
) -> pl.DataFrame:
    """Top-``k`` of every user as one row per (user, rank): ``user_id``, ``rank``, ``<item>_id``,
    ``score`` (the blend ranked by), ``model_score``, and where the chain has genres
    ``genre_score`` and ``genre_weight``. Every known item of a user is excluded, as in
    :func:`rank_songs`; users are scored in batches of at most ``batch_cells`` scores, and
    re-ranked by ``diversify`` when given (``rank`` is the re-ranked position)."""
    import polars as pl

    batch = max(1, batch_cells // max(index.num_songs, 1))
    user_ids, song_ids = pl.Series(_as_list(index.user_ids)), pl.Series(_as_list(index.song_ids))
    parts = []
    for start in range(0, index.num_users, batch):
        users = torch.arange(start, min(start + batch, index.num_users))
        ranked = rank_users(index, users, k, genre_prior, diversify)
        rows, ranks = ranked.valid.nonzero(as_tuple=True)
        columns = {
            "user": (users[rows]).numpy(),
            "rank": (ranks + 1).numpy().astype(np.int32),
            "item": ranked.songs[rows, ranks].numpy(),
            "score": ranked.score[rows, ranks].numpy(),
            "model_score": ranked.model_score[rows, ranks].numpy(),
        }
        if len(index.genre_ids):
            columns.update(
                genre_score=ranked.genre_score[rows, ranks].numpy(),
                genre_weight=ranked.genre_weight[rows].numpy().astype(np.float32),
            )
        parts.append(pl.DataFrame(columns))
    frame = pl.concat(parts)
    return frame.with_columns(
        user_ids.gather(frame["user"]).alias(f"{index.user_type}_id"),
        song_ids.gather(frame["item"]).alias(f"{index.item_type}_id"),
        pl.col("model_score").fill_nan(None),
    ).select(f"{index.user_type}_id", "rank", f"{index.item_type}_id", *frame.columns[3:])


def ranking_rows(index: ServingIndex, ranking: Ranking) -> list[dict]:
    """One plain dict per recommended song (warehouse ids and names)."""
    catalog, rows = index.names(), []
    parts = zip(
        ranking.songs.tolist(), ranking.score.tolist(), ranking.model_score.tolist(), ranking.genre_score.tolist()
    )
    for rank, (song, score, model, genre) in enumerate(parts, 1):
        artist = catalog.song_artist[song]
        genres = index.genre_matrix[song].nonzero().flatten().tolist()
        rows.append(
            {
                "rank": rank,
                "song_id": index.song_id(song),
                "title": catalog.song_title[song],
                "artist": catalog.artist_name[artist] if artist >= 0 else "-",
                "genres": ", ".join(catalog.genre_name[g] for g in genres),
                "score": float(score),
                "model_score": None if np.isnan(model) else float(model),
                "genre_score": float(genre),
            }
        )
    return rows


def text_table(rows: list[dict], columns: list[str], markdown: bool = False, digits: int = 4) -> str:
    """Rows as an aligned plain-text table (or a markdown table)."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        if isinstance(value, (list, tuple)):
            return " / ".join(cell(v) for v in value)
        return str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(v.replace("|", "\\|") for v in line) + " |" for line in body])
    widths = [max([len(c)] + [len(line[i]) for line in body]) for i, c in enumerate(columns)]
    numeric = [all(_numeric(line[i]) for line in body) and body for i in range(len(columns))]
    fmt = lambda values: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric))  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(line).rstrip() for line in body])


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "-"


RANKING_COLUMNS = ["rank", "song_id", "title", "artist", "genres", "score", "model_score", "genre_score"]


def render_ranking(index: ServingIndex, ranking: Ranking, who: str, markdown: bool = False) -> str:
    """A readable recommendation list with the score parts and the genre weight used."""
    rerank = f"; re-ranked: {ranking.diversify.label()}" if ranking.diversify.active else ""
    head = (
        f"{index.config.name}: top {ranking.songs.numel()} for {who} "
        f"({ranking.interactions} known interactions; genre weight w = n0/(n0+n) = {ranking.genre_weight:.2f}, "
        f"n0 = {ranking.genre_prior:g}{rerank})"
    )
    return head + "\n\n" + text_table(ranking_rows(index, ranking), RANKING_COLUMNS, markdown=markdown)
