"""Playlist-completion models, their config registry, training and evaluation.

Models (every one scores (playlist, track) pairs; a playlist's known tracks are masked):

* ``most_popular`` - tracks ranked by the number of training playlists holding them.
* ``itemknn`` - item-item cosine on the training playlist-track matrix ``X``:
  ``S = XᵀX / (‖x_i‖‖x_j‖ + shrink)`` (diagonal zeroed), scores ``X S``; sparse (scipy).
* ``lightgcn`` - :class:`torch_geometric.nn.models.LightGCN` on the playlist-track graph.
* ``playlist_gat`` - :class:`PlaylistGAT`: playlist, track, artist and genre id embeddings,
  GATv2 attention over playlist<->track, track<->artist and artist<->genre (the spine's
  :class:`~spotify_engine_assets.lib.models.HeteroGATLayer`), residual, LayerNorm, mean of
  layer outputs. Artist and genre context lets tracks share information through their artist.
  Options: ``cooccurrence_k`` adds a track->track relation along each track's most co-occurring
  tracks (the ItemKNN signal, from training playlists only); ``playlist_ids=False`` builds
  playlists from their tracks alone.
* ``itemknn_fusion`` (any trainable config): after training, the model's scores are mixed with
  ItemKNN's, ``(1 - w) z(model) + w z(ItemKNN)``, ``w`` chosen on validation R-precision.

Trainable models use BPR with negatives drawn from tracks not in the playlist's training part
(the spine's :func:`~spotify_engine_assets.lib.training.sample_negatives`), one forward pass over
the message-passing view per step, validation R-precision (the challenge's, with artist credit)
after each epoch for early stopping, the best weights restored. The training *mode* (``mini`` / ``quick`` / ``balanced`` / ``full``)
caps the playlists used for BPR and evaluation and the epochs.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn.models import LightGCN

from .models import HeteroGATLayer
from .paths import configs_dir
from .playlists import ARTIST_HAS, CONTAINS, REV_ARTIST_HAS, REV_CONTAINS, REV_TRACK_BY, TRACK_BY

CO_OCCURS = ("track", "co_occurs", "track")
from .recsys_metrics import LIST_LENGTH, artist_matches, hit_matrix, recsys_metrics
from .training import sample_negatives

Logger = Callable[[str], None]
PlaylistModelKind = Literal["most_popular", "itemknn", "lightgcn", "playlist_gat"]


class PlaylistConfigError(ValueError):
    """The playlist model registry or one of its entries is invalid, or a name is unknown."""


class TrainingMode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    playlists: int = Field(gt=0, description="Playlists used for BPR positives and evaluation (seeded sample).")
    epochs: int = Field(gt=0, description="Maximum epochs.")


class PlaylistModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: PlaylistModelKind
    description: str = ""
    mode: str = Field("quick", description="Training mode preset (playlists and epochs).")
    embedding_dim: int = Field(64, gt=0)
    num_layers: int = Field(2, ge=1, le=6)
    heads: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(0.01, gt=0.0)
    l2: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(4096, gt=0)
    patience: int = Field(3, ge=1)
    shrink: float = Field(10.0, ge=0.0, description="ItemKNN cosine shrinkage (also of PlaylistGAT's co-occurrence edges).")
    cooccurrence_k: int = Field(
        0, ge=0, le=200,
        description="PlaylistGAT: also pass messages track->track along each track's k most co-occurring tracks "
        "(shrunk cosine over the training playlists; 0: no such relation).",
    )
    playlist_ids: bool = Field(
        True, description="PlaylistGAT: learn a free embedding per playlist (False: playlists start at zero and are "
        "built from their training tracks only, like ItemKNN's sum over a playlist's tracks).",
    )
    itemknn_fusion: bool = Field(
        False, description="Trainable models: after training, mix their scores with ItemKNN's, "
        "(1 - w) * z(embedding score) + w * z(ItemKNN score) (z: per-playlist standardization), the weight w "
        "chosen from FUSION_WEIGHTS on validation R-precision and stored with the weights.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> PlaylistModelConfig:
        if self.model == "playlist_gat" and self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        return self

    @property
    def trainable(self) -> bool:
        return self.model in ("lightgcn", "playlist_gat")


class PlaylistRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    modes: dict[str, TrainingMode]
    configs: dict[str, PlaylistModelConfig]


def load_playlist_registry(path: Path | None = None) -> PlaylistRegistry:
    """``configs/playlist_models.yaml``: ``modes`` (presets) and ``configs`` (the partitions)."""
    path = path or configs_dir() / "playlist_models.yaml"
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PlaylistConfigError(f"{path}: cannot read ({error})") from error
    if not isinstance(raw, dict) or set(raw) != {"modes", "configs"}:
        raise PlaylistConfigError(f"{path}: expected exactly the keys 'modes' and 'configs'")
    configs = {}
    for name, settings in (raw["configs"] or {}).items():
        if not isinstance(settings, dict):
            raise PlaylistConfigError(f"{path}: config {name!r} must be a mapping")
        try:
            configs[str(name)] = PlaylistModelConfig(name=str(name), **settings)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise PlaylistConfigError(f"{path}: config {name!r}: {problems}") from None
    try:
        registry = PlaylistRegistry(modes=raw["modes"], configs=configs)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise PlaylistConfigError(f"{path}: {problems}") from None
    for config in configs.values():
        if config.mode not in registry.modes:
            raise PlaylistConfigError(f"{path}: config {config.name!r}: unknown mode {config.mode!r}; known: {sorted(registry.modes)}")
    return registry


@functools.cache
def default_playlist_registry() -> PlaylistRegistry:
    return load_playlist_registry()


# --- models -----------------------------------------------------------------------------------


class PlaylistGAT(nn.Module):
    """Id embeddings for playlist, track, artist, genre refined by GATv2 layers over every
    relation of the message-passing view; returns (playlist, track) embeddings.

    Options: ``cooccurrence_k`` adds a track->track relation (``CO_OCCURS``) along each track's
    ``k`` most co-occurring tracks in the training playlists - the signal ItemKNN scores with;
    ``playlist_ids=False`` drops the free playlist embedding, so a playlist is represented only
    by what its training tracks send it (inductive: a playlist with new tracks needs no retraining
    of a per-playlist vector).
    """

    def __init__(
        self,
        num_nodes: dict[str, int],
        dim: int = 64,
        num_layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        cooccurrence_k: int = 0,
        shrink: float = 10.0,
        playlist_ids: bool = True,
    ) -> None:
        super().__init__()
        self.node_types = ("playlist", "track", "artist") + (("genre",) if num_nodes.get("genre", 0) else ())
        relations = [REV_CONTAINS, CONTAINS, TRACK_BY, REV_TRACK_BY]
        if "genre" in self.node_types:
            relations += [ARTIST_HAS, REV_ARTIST_HAS]
        self.cooccurrence_k, self.shrink, self.playlist_ids = cooccurrence_k, shrink, playlist_ids
        if cooccurrence_k:
            relations.append(CO_OCCURS)
        self.embeddings = nn.ModuleDict(
            {t: nn.Embedding(num_nodes[t], dim) for t in self.node_types if t != "playlist" or playlist_ids}
        )
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.1)
        self.num_playlists, self.dim = num_nodes["playlist"], dim
        self.layers = nn.ModuleList(HeteroGATLayer(relations, dim, heads=heads, dropout=dropout) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.node_types}) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self._cooccurrence: tuple[Tensor, Tensor] | None = None  # (the view's contains edges, co-occurrence edges)

    def _with_cooccurrence(self, view: HeteroData) -> HeteroData:
        if not self.cooccurrence_k:
            return view
        contains = view[CONTAINS].edge_index
        if self._cooccurrence is None or self._cooccurrence[0] is not contains:  # the reference keeps the id unique
            self._cooccurrence = (contains, cooccurrence_edges(view, self.cooccurrence_k, self.shrink))
        extended = copy.copy(view)
        extended[CO_OCCURS].edge_index = self._cooccurrence[1]
        return extended

    def forward(self, view: HeteroData) -> tuple[Tensor, Tensor]:
        view = self._with_cooccurrence(view)
        x = {t: self.embeddings[t].weight for t in self.node_types if t in self.embeddings}
        if not self.playlist_ids:
            x["playlist"] = self.embeddings["track"].weight.new_zeros(self.num_playlists, self.dim)
        playlists, tracks = [x["playlist"]], [x["track"]]
        for layer, norms in zip(self.layers, self.norms):
            messages = layer(x, view)
            x = {t: h + self.dropout(norms[t](messages[t])) if t in messages else h for t, h in x.items()}
            playlists.append(x["playlist"])
            tracks.append(x["track"])
        if not self.playlist_ids:
            playlists = playlists[1:]  # the all-zero start carries nothing
        return torch.stack(playlists).mean(0), torch.stack(tracks).mean(0)

    def ego_l2(self, playlists: Tensor, tracks: Tensor) -> Tensor:
        penalty = self.embeddings["track"](tracks).pow(2).sum()
        if self.playlist_ids:
            penalty = penalty + self.embeddings["playlist"](playlists).pow(2).sum()
        return penalty / playlists.numel()


def cooccurrence_edges(view: HeteroData, k: int, shrink: float) -> Tensor:
    """``[2, E]`` track->track edges: for each track, its ``k`` most similar tracks by the shrunk
    cosine of :func:`itemknn_similarity` on the view's (training) contains edges; ties and
    zero similarities dropped. Source row 0 is the neighbour, row 1 the receiving track."""
    similarity = itemknn_similarity(view, shrink).tocsr()
    similarity.eliminate_zeros()
    sources, targets = [], []
    indptr, indices, values = similarity.indptr, similarity.indices, similarity.data
    counts = np.diff(indptr)
    for track in np.nonzero(counts)[0]:
        start, stop = indptr[track], indptr[track + 1]
        row = values[start:stop]
        keep = np.argsort(-row, kind="stable")[:k]
        sources.append(indices[start:stop][keep])
        targets.append(np.full(keep.size, track))
    if not sources:
        return torch.empty((2, 0), dtype=torch.long)
    return torch.from_numpy(np.stack([np.concatenate(sources), np.concatenate(targets)])).long()


class PlaylistLightGCN(nn.Module):
    """PyG LightGCN over playlists ``0..P-1`` and tracks ``P..P+T-1`` (training edges only)."""

    def __init__(self, num_nodes: dict[str, int], dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.num_playlists = num_nodes["playlist"]
        self.model = LightGCN(num_nodes["playlist"] + num_nodes["track"], dim, num_layers)

    def forward(self, view: HeteroData) -> tuple[Tensor, Tensor]:
        p, t = view[CONTAINS].edge_index
        t = t + self.num_playlists
        edge_index = torch.stack([torch.cat([p, t]), torch.cat([t, p])])
        embedding = self.model.get_embedding(edge_index)
        return embedding[: self.num_playlists], embedding[self.num_playlists :]

    def ego_l2(self, playlists: Tensor, tracks: Tensor) -> Tensor:
        weight = self.model.embedding.weight
        return (weight[playlists].pow(2).sum() + weight[tracks + self.num_playlists].pow(2).sum()) / playlists.numel()


FUSION_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def build_trainable(config: PlaylistModelConfig, num_nodes: dict[str, int]) -> nn.Module:
    torch.manual_seed(config.seed)
    if config.model == "playlist_gat":
        model = PlaylistGAT(
            num_nodes, config.embedding_dim, config.num_layers, config.heads, config.dropout,
            cooccurrence_k=config.cooccurrence_k, shrink=config.shrink, playlist_ids=config.playlist_ids,
        )
    elif config.model == "lightgcn":
        model = PlaylistLightGCN(num_nodes, config.embedding_dim, config.num_layers)
    else:
        raise PlaylistConfigError(f"config {config.name!r}: model {config.model!r} is not trainable")
    if config.itemknn_fusion:
        model.register_buffer("fusion_weight", torch.tensor(0.0))  # set on validation by train_bpr
    return model


Scorer = Callable[[Tensor], Tensor]  # playlist indices -> [n, num_tracks] scores


def popularity_scorer(view: HeteroData) -> tuple[Scorer, Tensor]:
    popularity = torch.bincount(view[CONTAINS].edge_index[1], minlength=view["track"].num_nodes).float()
    return (lambda playlists: popularity.expand(playlists.numel(), -1)), popularity


def itemknn_similarity(view: HeteroData, shrink: float) -> sp.csr_matrix:
    """Sparse item-item cosine similarity with shrinkage from the training matrix."""
    p, t = view[CONTAINS].edge_index.numpy()
    x = sp.csr_matrix((np.ones(len(p), dtype=np.float32), (p, t)), shape=(view["playlist"].num_nodes, view["track"].num_nodes))
    co = (x.T @ x).tocoo()
    norms = np.sqrt(np.asarray(x.sum(0)).ravel())
    values = co.data / (norms[co.row] * norms[co.col] + shrink + 1e-12)
    values[co.row == co.col] = 0.0
    return sp.csr_matrix((values.astype(np.float32), (co.row, co.col)), shape=co.shape)


def itemknn_scorer(view: HeteroData, similarity: sp.csr_matrix) -> Scorer:
    p, t = view[CONTAINS].edge_index.numpy()
    x = sp.csr_matrix((np.ones(len(p), dtype=np.float32), (p, t)), shape=(view["playlist"].num_nodes, view["track"].num_nodes))

    def score(playlists: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray((x[playlists.numpy()] @ similarity).todense(), dtype=np.float32))

    return score


def embedding_scorer(playlist_emb: Tensor, track_emb: Tensor) -> Scorer:
    return lambda playlists: playlist_emb[playlists] @ track_emb.T


def _standardize(scores: Tensor) -> Tensor:
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp_min(1e-8)


def fused_scorer(first: Scorer, second: Scorer, weight: float) -> Scorer:
    """``(1 - weight) * z(first) + weight * z(second)``, z standardizing each playlist's row."""
    if weight <= 0.0:
        return first
    if weight >= 1.0:
        return second
    return lambda playlists: (1.0 - weight) * _standardize(first(playlists)) + weight * _standardize(second(playlists))


@torch.no_grad()
def embed(model: nn.Module, view: HeteroData) -> tuple[Tensor, Tensor]:
    was_training = model.training
    model.eval()
    out = model(view)
    model.train(was_training)
    return out


# --- evaluation -------------------------------------------------------------------------------


def evaluate(
    scorer: Scorer,
    relevant: Tensor,
    known: Tensor,
    num_tracks: int,
    playlists: Tensor | None = None,
    chunk_size: int = 1024,
    ks: tuple[int, ...] = (10, 50, 500),
    track_artist: Tensor | None = None,
) -> dict[str, float]:
    """RecSys 2018 metrics: rank every track for each playlist with a ``relevant`` pair
    (``[2, E]`` playlist, track), masking its ``known`` pairs; lists are at most 500 long.

    ``playlists`` restricts evaluation to those playlists (a training mode's sample).
    ``track_artist`` (:func:`track_artists`) adds the challenge's ``r_precision`` with artist
    partial credit; ``r_precision_track`` is always there.
    """
    rows_all = torch.unique(relevant[0])
    if playlists is not None:
        rows_all = rows_all[torch.isin(rows_all, playlists)]
    if rows_all.numel() == 0:
        raise ValueError("no playlist with held-out tracks to evaluate")
    length = min(LIST_LENGTH, num_tracks)
    num_rows = int(max(int(relevant[0].max()), int(known[0].max()) if known.numel() else 0)) + 1
    row_of = torch.full((num_rows,), -1, dtype=torch.long)
    hits, counts, credits = [], [], []
    for start in range(0, rows_all.numel(), chunk_size):
        chunk = rows_all[start : start + chunk_size]
        row_of.fill_(-1)
        row_of[chunk] = torch.arange(chunk.numel())
        scores = scorer(chunk).clone()
        known_rows = row_of[known[0]]
        masked = known_rows >= 0
        scores[known_rows[masked], known[1][masked]] = float("-inf")
        top = scores.topk(length, dim=1)
        ranked = top.indices.masked_fill(top.values == float("-inf"), num_tracks)
        relevant_rows = row_of[relevant[0]]
        in_chunk = relevant_rows >= 0
        chunk_hits = hit_matrix(ranked, relevant_rows[in_chunk], relevant[1][in_chunk], num_tracks)
        chunk_counts = torch.bincount(relevant_rows[in_chunk], minlength=chunk.numel())
        hits.append(chunk_hits)
        counts.append(chunk_counts)
        if track_artist is not None:
            credits.append(
                artist_matches(ranked, chunk_hits, chunk_counts, relevant_rows[in_chunk], relevant[1][in_chunk], track_artist)
            )
    return recsys_metrics(torch.cat(hits), torch.cat(counts), ks, torch.cat(credits) if credits else None)


def track_artists(data: HeteroData) -> Tensor:
    """``[num_tracks]`` artist index of each track (``-1`` where a track has none)."""
    artist = torch.full((data["track"].num_nodes,), -1, dtype=torch.long)
    by = data[TRACK_BY].edge_index
    artist[by[0]] = by[1]
    return artist


# --- training ---------------------------------------------------------------------------------


def sample_playlists(num_playlists: int, cap: int, seed: int) -> Tensor:
    """The mode's playlist sample (all playlists when the cap is larger)."""
    if cap >= num_playlists:
        return torch.arange(num_playlists)
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(num_playlists, generator=generator)[:cap]).values


def train_bpr(
    model: nn.Module,
    view: HeteroData,
    valid_pairs: Tensor,
    config: PlaylistModelConfig,
    epochs: int,
    playlists: Tensor,
    log: Logger | None = None,
) -> dict:
    """BPR on the training contains edges of ``playlists``; early stop on validation R-precision."""
    log = log or (lambda message: None)
    generator = torch.Generator().manual_seed(config.seed)
    train_pairs = view[CONTAINS].edge_index
    num_tracks = view["track"].num_nodes
    known_keys = torch.sort(train_pairs[0] * num_tracks + train_pairs[1]).values
    artists = track_artists(view)
    positives = train_pairs[:, torch.isin(train_pairs[0], playlists)]
    if positives.size(1) == 0:
        raise ValueError("no training edge among the sampled playlists")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    best_state, best_score, best_epoch, history = copy.deepcopy(model.state_dict()), -1.0, 0, []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(positives.size(1), generator=generator)
        total = 0.0
        batches = 0
        for batch in order.split(config.batch_size):
            p, t = positives[0, batch], positives[1, batch]
            negatives = sample_negatives(p, known_keys, num_tracks, generator)
            playlist_emb, track_emb = model(view)
            pos = (playlist_emb[p] * track_emb[t]).sum(-1)
            neg = (playlist_emb[p] * track_emb[negatives]).sum(-1)
            loss = F.softplus(neg - pos).mean() + config.l2 * model.ego_l2(p, torch.cat([t, negatives]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        playlist_emb, track_emb = embed(model, view)
        valid = evaluate(
            embedding_scorer(playlist_emb, track_emb), valid_pairs, train_pairs, num_tracks, playlists, ks=(10,), track_artist=artists
        )
        history.append({"epoch": epoch, "loss": total / batches, "valid_r_precision": valid["r_precision"], "valid_recall@10": valid["recall@10"]})
        log(f"epoch {epoch}: loss {total / batches:.4f} valid R-precision {valid['r_precision']:.4f}")
        if valid["r_precision"] > best_score:
            best_score, best_epoch, best_state = valid["r_precision"], epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            log(f"early stop at epoch {epoch}; best epoch {best_epoch}")
            break
    final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    fusion = {}
    if config.itemknn_fusion:
        fusion = choose_fusion_weight(model, view, valid_pairs, config, playlists, log)
        best_state = copy.deepcopy(model.state_dict())
    return {
        "fusion_valid_r_precision": fusion,
        "best_state": best_state,
        "final_state": final_state,
        "history": history,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "best_valid_r_precision": best_score,
        "train_seconds": time.perf_counter() - started,
    }


def choose_fusion_weight(
    model: nn.Module, view: HeteroData, valid_pairs: Tensor, config: PlaylistModelConfig, playlists: Tensor, log: Logger | None = None
) -> dict[float, float]:
    """Set ``model.fusion_weight`` to the weight of :data:`FUSION_WEIGHTS` with the best
    validation R-precision of the fused scores (ties: the smaller ItemKNN share); returns each
    weight's validation R-precision."""
    train_pairs, num_tracks = view[CONTAINS].edge_index, view["track"].num_nodes
    knn = itemknn_scorer(view, itemknn_similarity(view, config.shrink))
    learned = embedding_scorer(*embed(model, view))
    artists = track_artists(view)
    fusion = {
        weight: evaluate(fused_scorer(learned, knn, weight), valid_pairs, train_pairs, num_tracks, playlists, ks=(10,), track_artist=artists)["r_precision"]
        for weight in FUSION_WEIGHTS
    }
    chosen = max(fusion, key=lambda weight: (fusion[weight], -weight))
    model.fusion_weight.fill_(chosen)
    (log or (lambda message: None))(f"ItemKNN fusion weight {chosen} (validation R-precision {fusion[chosen]:.4f}; {fusion[0.0]:.4f} without)")
    return fusion


def scorer_for(config: PlaylistModelConfig, view: HeteroData, state: dict | None) -> Scorer:
    """The scorer of a fitted config (``state``: trained weights for trainable models)."""
    if config.model == "most_popular":
        return popularity_scorer(view)[0]
    if config.model == "itemknn":
        return itemknn_scorer(view, itemknn_similarity(view, config.shrink))
    num_nodes = {t: int(view[t].num_nodes) for t in view.node_types}
    model = build_trainable(config, num_nodes)
    if state is None:
        raise PlaylistConfigError(f"config {config.name!r}: trained weights are missing")
    model.load_state_dict(state)
    learned = embedding_scorer(*embed(model, view))
    if config.itemknn_fusion:
        return fused_scorer(learned, itemknn_scorer(view, itemknn_similarity(view, config.shrink)), float(model.fusion_weight))
    return learned


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
