"""Serving a materialized model: load a config's trained model with its graph, map warehouse ids
to node indices (clear errors for unknown users, songs, genres and configs), and rank songs.

A :class:`ModelBundle` holds what recommending and explaining need: the full listening graph
(every known interaction, used only to exclude songs a user already played), the
message-passing view the model was trained on (training listens edges only), the model, its
user and song embeddings, and the training popularity of every song.

Ranking (:func:`rank_songs`) mixes the model's score with a genre score under an *adaptive genre
weight* (see :mod:`.cold_start`): ``w = n0 / (n0 + n)`` with ``n`` the
user's number of training interactions, so new users lean on genres and active users on the
collaborative signal. ``n0 = 0`` ranks by the model's score alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import ConfigError, ModelConfig, parse_config
from ..data.graph import Schema, from_payload
from ..dataset import Dataset
from ..models import Recommender
from ..models.baselines import MostPopular
from ..storage.artifacts import ArtifactNotFoundError, ArtifactStore, load_torch
from .cold_start import adaptive_weight, blend, genre_profile_of_songs, genre_scores, song_genre_matrix, tune_genre_prior

DEFAULT_GENRE_PRIOR = 5.0


class UnknownIdError(LookupError):
    """A user, song, genre or model config the command line or library was asked about does not exist."""

    def __str__(self) -> str:  # LookupError's str() would quote the message
        return str(self.args[0])


def id_error(kind: str, value, known: list, presorted: bool = False) -> UnknownIdError:
    """An error naming the unknown id and listing what exists (a sample and the count when long)."""
    known = list(known) if presorted else sorted(known)
    span = f" (ids {known[0]}..{known[-1]})" if known and len(known) > 10 and all(isinstance(k, int) for k in known) else ""
    sample = ", ".join(str(v) for v in known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
    return UnknownIdError(f"unknown {kind} {value!r}; {len(known)} {kind}s exist{span}: {sample}")


@dataclass
class Catalog:
    """Display names by node index (warehouse titles and names when available)."""

    song_title: list[str]
    song_artist: list[int]          # artist node index of every song
    artist_name: list[str]
    genre_name: list[str]

    @classmethod
    def from_graph(cls, data: HeteroData, schema: Schema, warehouse: Path | None = None) -> Catalog:
        by, has = schema.category("artist"), schema.category("genre")
        if by is None or has is None:
            raise ConfigError(f"serving needs item-artist and item-genre relations; the graph has {sorted(schema.categories)}")
        song_ids = data[schema.item].node_id.tolist()
        artist_ids = data[by[2]].node_id.tolist()
        genre_ids = data[has[2]].node_id.tolist()
        song_artist = [-1] * len(song_ids)
        for song, artist in data[by].edge_index.t().tolist():
            song_artist[song] = artist
        titles = {i: f"song {i}" for i in song_ids}
        artists = {i: f"artist {i}" for i in artist_ids}
        genres = {i: f"genre {i}" for i in genre_ids}
        if warehouse is not None and Path(warehouse).exists():
            _warehouse_names(Path(warehouse), {"songs": titles, "artists": artists, "genres": genres})
        return cls([titles[i] for i in song_ids], song_artist, [artists[i] for i in artist_ids],
                   [genres[i] for i in genre_ids])


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


@dataclass
class ModelBundle:
    """A trained model ready to serve, with the graph it was trained on."""

    config: ModelConfig
    model: Recommender
    schema: Schema
    data: HeteroData               # full graph: every known interaction
    view: HeteroData               # message-passing graph: training interactions only
    user_emb: Tensor
    song_emb: Tensor
    catalog: Catalog
    valid_pairs: Tensor | None = None   # the split's validation (user, song) pairs: where n0 is chosen
    popularity: Tensor = field(init=False)
    genre_matrix: Tensor = field(init=False)

    def __post_init__(self) -> None:
        interaction = self.schema.interaction
        self.popularity = torch.bincount(self.view[interaction].edge_index[1], minlength=self.num_songs).float()
        self.genre_matrix = song_genre_matrix(self.view, self.schema)
        self._user_index, self._song_index, self._genre_index = (
            {int(v): i for i, v in enumerate(self.data[node_type].node_id.tolist())}
            for node_type in (self.schema.user, self.schema.item, self.schema.category("genre")[2])
        )
        known, train = self.data[interaction].edge_index, self.view[interaction].edge_index
        self._known = known[:, torch.argsort(known[0], stable=True)]  # by user: a user's songs are one slice
        self._train = train[:, torch.argsort(train[0], stable=True)]

    @property
    def num_songs(self) -> int:
        return int(self.data[self.schema.item].num_nodes)

    # ---------------------------------------------------------------- id maps
    def user_index(self, user_id) -> int:
        return _lookup("user", user_id, self._user_index)

    def song_index(self, song_id) -> int:
        return _lookup("song", song_id, self._song_index)

    def genre_index(self, genre) -> int:
        """A genre by warehouse id or (case-insensitive) name."""
        try:
            return self._genre_index[int(genre)]
        except (KeyError, ValueError, TypeError):
            pass
        names = {name.lower(): i for i, name in enumerate(self.catalog.genre_name)}
        if str(genre).lower() in names:
            return names[str(genre).lower()]
        listing = [f"{gid} ({self.catalog.genre_name[i]})" for gid, i in sorted(self._genre_index.items())]
        raise id_error("genre", genre, listing, presorted=True)

    def user_id(self, index: int) -> int:
        return int(self.data[self.schema.user].node_id[index])

    def song_id(self, index: int) -> int:
        return int(self.data[self.schema.item].node_id[index])

    # ---------------------------------------------------------------- interactions
    def known_songs(self, user: int) -> Tensor:
        """Every song the user has an interaction with (train, validation and test)."""
        return _songs_of(self._known, user)

    def training_songs(self, user: int) -> Tensor:
        """The user's songs in the message-passing graph (what the model saw)."""
        return _songs_of(self._train, user)

    def genre_prior(self) -> float:
        """``n0`` of the adaptive genre weight, chosen on the validation pairs (cached); the default
        ``DEFAULT_GENRE_PRIOR`` without validation pairs."""
        if getattr(self, "_genre_prior", None) is None:
            if self.valid_pairs is None or self.valid_pairs.numel() == 0:
                self._genre_prior, self.genre_prior_scores = DEFAULT_GENRE_PRIOR, {}
            else:
                self._genre_prior, self.genre_prior_scores = tune_genre_prior(
                    self.user_emb, self.song_emb, self.view, self.valid_pairs, self.schema
                )
        return self._genre_prior


def _lookup(kind: str, value, index: dict[int, int]) -> int:
    try:
        return index[int(value)]
    except (KeyError, ValueError, TypeError):
        raise id_error(kind, value, list(index)) from None


def _songs_of(by_user: Tensor, user: int) -> Tensor:
    """The songs of ``user`` in ``[2, E]`` (user, song) pairs sorted by user."""
    start = int(torch.searchsorted(by_user[0], user))
    return by_user[1, start:int(torch.searchsorted(by_user[0], user, right=True))]


def available_configs(store: ArtifactStore, chain: str, registry: list[str]) -> list[str]:
    """Configs of ``registry`` with a materialized ``<chain>/trained_model`` partition."""
    return [name for name in registry if (store.slot([chain, "trained_model"], name) / "CURRENT").exists()]


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


def bundle_from(dataset: Dataset, artifact: dict, graph_payload: dict, splits: dict, warehouse: Path | None = None) -> ModelBundle:
    """A bundle from the loaded ``trained_model``, ``graph`` and ``split`` values of a chain."""
    data = from_payload(graph_payload)
    try:
        config = parse_config(artifact["config"])
    except Exception as error:  # noqa: BLE001 - a stale artifact from an older schema
        raise ConfigError(f"trained_model holds an invalid config: {error}") from error
    split = splits[config.split]
    try:
        model, view = dataset.load(config, data, split, artifact["state"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise ConfigError(
            f"trained_model[{config.name}] does not fit the current model code or graph ({error}); "
            f"re-materialize it: spotify-engine materialize --configs {config.name}"
        ) from error
    user_emb, song_emb = model.factors()
    valid_pairs = dataset.pairs(data, split["valid"])
    return ModelBundle(config, model, dataset.schema, data, view, user_emb, song_emb,
                       Catalog.from_graph(data, dataset.schema, warehouse), valid_pairs)


@dataclass
class Ranking:
    """Top-k songs for one user, with the parts of each score."""

    songs: Tensor           # song node indices, best first
    score: Tensor           # blended score used for ranking
    model_score: Tensor     # the model's own score (dot product); NaN where there is none
    genre_score: Tensor     # genre-profile score
    genre_weight: float     # w = n0 / (n0 + n)
    interactions: int       # n
    genre_prior: float      # n0


def rank_songs(
    bundle: ModelBundle, k: int, *, user: int | None = None, songs: list[int] | None = None,
    genres: list[int] | None = None, genre_prior: float | None = None,
) -> Ranking:
    """Top-``k`` songs for a known user (node index) or a new user given by songs and/or genres.

    A known user is scored by the model's user embedding, new users by the mean of the model's
    embeddings of their songs (fold-in); the genre score comes from the genre profile of the
    user's training songs (or given songs, or given genres). Songs the user already played
    (every known interaction) or named are never recommended. ``genre_prior`` is ``n0`` (``None``:
    the bundle's, chosen on validation).
    """
    if user is None and not songs and not genres:
        raise ValueError("give a user, or a new user's songs and/or genres")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    genre_prior = bundle.genre_prior() if genre_prior is None else float(genre_prior)
    if user is not None:
        own = bundle.training_songs(user)
        n = int(own.numel())
        cf_user = bundle.user_emb[user] if not isinstance(bundle.model, MostPopular) else None
        profile = genre_profile_of_songs(bundle.genre_matrix, own)
        exclude = bundle.known_songs(user)
    else:
        given = torch.tensor(sorted(set(songs or [])), dtype=torch.long)
        n = int(given.numel())
        cf_user = bundle.song_emb[given].mean(0) if n and not isinstance(bundle.model, MostPopular) else None
        profile = genre_profile_of_songs(bundle.genre_matrix, given) if n else torch.zeros(bundle.genre_matrix.size(1))
        if genres:
            stated = torch.zeros_like(profile)
            stated[torch.tensor(sorted(set(genres)))] = 1.0
            profile = profile + stated / stated.sum()
            profile = profile / profile.sum()
        exclude = given
    genre = genre_scores(bundle.genre_matrix, bundle.popularity, profile)
    if cf_user is None:
        # most-popular has no user factor: its score is popularity, shared by every user
        model = bundle.popularity.clone() if isinstance(bundle.model, MostPopular) else torch.full_like(genre, float("nan"))
    else:
        model = bundle.song_emb @ cf_user
    weight = adaptive_weight(n, genre_prior) if not torch.isnan(model).all() else 1.0
    score = blend(model if not torch.isnan(model).all() else torch.zeros_like(genre), genre, weight)
    score[exclude] = float("-inf")
    top = score.topk(min(k, int(torch.isfinite(score).sum())))
    return Ranking(top.indices, top.values, model[top.indices], genre[top.indices], weight, n, genre_prior)


def ranking_rows(bundle: ModelBundle, ranking: Ranking) -> list[dict]:
    """One plain dict per recommended song (warehouse ids and names)."""
    rows = []
    parts = zip(ranking.songs.tolist(), ranking.score.tolist(), ranking.model_score.tolist(), ranking.genre_score.tolist())
    for rank, (song, score, model, genre) in enumerate(parts, 1):
        artist = bundle.catalog.song_artist[song]
        genres = bundle.genre_matrix[song].nonzero().flatten().tolist()
        rows.append({
            "rank": rank,
            "song_id": bundle.song_id(song),
            "title": bundle.catalog.song_title[song],
            "artist": bundle.catalog.artist_name[artist] if artist >= 0 else "-",
            "genres": ", ".join(bundle.catalog.genre_name[g] for g in genres),
            "score": float(score),
            "model_score": None if np.isnan(model) else float(model),
            "genre_score": float(genre),
        })
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


def render_ranking(bundle: ModelBundle, ranking: Ranking, who: str, markdown: bool = False) -> str:
    """A readable recommendation list with the score parts and the genre weight used."""
    head = (f"{bundle.config.name}: top {ranking.songs.numel()} for {who} "
            f"({ranking.interactions} known interactions; genre weight w = n0/(n0+n) = {ranking.genre_weight:.2f}, "
            f"n0 = {ranking.genre_prior:g})")
    return head + "\n\n" + text_table(ranking_rows(bundle, ranking), RANKING_COLUMNS, markdown=markdown)
