"""Cold start: recommendations for users described only by a few genres or a few songs, and
their measurement on users held out of training entirely.

Scores, per song :math:`s`, for a user with genre profile :math:`p` (a distribution over
genres) and :math:`n` known songs:

* genre score: the song's probability under genre-conditioned popularity,
  :math:`G(s) = \\sum_g p(g)\\, \\frac{(c_s + 1)\\, q_s(g)}{\\sum_{s'} (c_{s'} + 1)\\, q_{s'}(g)}`
  with :math:`c_s` the song's training listeners and :math:`q_s(g) = 1/|genres(s)|` for the
  song's genres: popular songs of the user's genres first.
* collaborative score: the model's dot product with the user's embedding; a new user's
  embedding is the mean of the model's embeddings of their songs (fold-in, no retraining).
* blended: :math:`(1 - w)\\, z(\\text{collaborative}) + w\\, z(G)`, ``z`` standardizing over the
  catalogue, with the **adaptive genre weight** :math:`w = n_0 / (n_0 + n)`: a genre-only user
  (``n = 0``) is ranked by genres alone, a user with ``n = n_0`` songs half and half, an active
  user almost only by the model.

A user's genre profile from songs spreads each song's unit weight evenly over its genres.

:func:`evaluate_cold_start` trains the config's model on a training graph *without* a seeded
sample of users, then for each held-out user reveals their first ``n`` songs in time order (or
only the top genres of their first songs) and scores Recall/NDCG@10 on the songs they played
after, against most-popular.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from ..data.graph import Schema
from ..evaluation.metrics import chunk_users, metric_collection
from ..models import embed, sample_users
from ..models.lightgcn import LightGCN
from .scores import adaptive_weight, adaptive_weights, blend, genre_matrix_of, genre_profile_of_songs, genre_scores

__all__ = [
    "GENRE_PRIOR_GRID",
    "adaptive_weight",
    "blend",
    "describe_weight",
    "evaluate_cold_start",
    "genre_profile_of_songs",
    "genre_scores",
    "holdout_users",
    "song_genre_matrix",
    "stated_genres",
    "tune_genre_prior",
    "zero_user_embeddings",
]

EVAL_K = 10
GENRE_PRIOR_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)


def song_genre_matrix(data: HeteroData, schema: Schema) -> Tensor:
    """``[songs, genres]`` with ``q_s(g) = 1 / |genres(s)|`` on a song's genres (rows of untagged songs are 0)."""
    has = schema.category("genre")
    if has is None:
        raise ValueError(f"the graph has no item-genre relation (schema categories: {sorted(schema.categories)})")
    return genre_matrix_of(data[has].edge_index, int(data[schema.item].num_nodes), int(data[has[2]].num_nodes))


def stated_genres(genre_matrix: Tensor, songs: Tensor, top: int = 3) -> Tensor:
    """The ``top`` genres of a user's songs (what a new user would tick in a genre picker), as a uniform profile."""
    profile = genre_profile_of_songs(genre_matrix, songs)
    chosen = profile.topk(min(top, int((profile > 0).sum()))).indices
    stated = torch.zeros_like(profile)
    stated[chosen] = 1.0 / max(chosen.numel(), 1)
    return stated


def _topk_masked(scores: Tensor, exclude_rows: Tensor, exclude_songs: Tensor, k: int) -> Tensor:
    scores = scores.clone()
    scores[exclude_rows, exclude_songs] = float("-inf")
    return scores.topk(k, dim=1).indices


def _metrics(topk: Tensor, target_rows: Tensor, target_songs: Tensor, num_songs: int) -> dict[str, float]:
    collection = metric_collection(num_songs, ks=(EVAL_K,))
    collection.update(topk, (target_rows, target_songs))
    values = collection.compute()
    return {name: float(values[name]) for name in (f"recall@{EVAL_K}", f"ndcg@{EVAL_K}")}


def _training_profiles(view: HeteroData, schema: Schema, users: Tensor, genre_matrix: Tensor) -> tuple[Tensor, ...]:
    """For ``users`` (one row each): the row of every user node (-1 for others), the rows' training
    edges in ``view``, their genre profiles from those edges and their training interaction counts."""
    num_users = int(view[schema.user].num_nodes)
    row_of = torch.full((num_users,), -1, dtype=torch.long)
    row_of[users] = torch.arange(users.numel())
    train = view[schema.interaction].edge_index
    own = train[:, row_of[train[0]] >= 0]
    profiles = torch.zeros(users.numel(), genre_matrix.size(1))
    profiles.index_add_(0, row_of[own[0]], genre_matrix[own[1]])
    counts = torch.bincount(train[0], minlength=num_users)[users]
    return row_of, own, profiles / profiles.sum(1, keepdim=True).clamp(min=1e-12), counts


def tune_genre_prior(
    user_emb: Tensor,
    song_emb: Tensor,
    view: HeteroData,
    valid_pairs: Tensor,
    schema: Schema,
    grid: Sequence[float] = GENRE_PRIOR_GRID,
    max_users: int | None = 5000,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """Choose ``n0`` on validation: NDCG@10 of the adaptive blend for every value of ``grid``,
    ranking the validation users' songs with their training songs masked (genre profile and
    ``n`` from the training graph). Returns the best ``n0`` (the smallest on ties) and every score.

    At most ``max_users`` validation users (a seeded sample; None: all) are ranked, a chunk of
    users at a time (:func:`~..evaluation.metrics.chunk_users`), so memory and time stay linear
    in the catalogue on large worlds (the blend standardizes each row: chunks change nothing)."""
    users = torch.unique(valid_pairs[0])
    if users.numel() == 0:
        raise ValueError("no validation pairs to choose n0 on")
    sample = sample_users(users.numel(), max_users, seed)
    if sample is not None:
        users = users[sample]
        valid_pairs = valid_pairs[:, torch.isin(valid_pairs[0], users)]
    num_songs = int(view[schema.item].num_nodes)
    genre_matrix = song_genre_matrix(view, schema)
    row_of, own, profiles, counts = _training_profiles(view, schema, users, genre_matrix)
    popularity = torch.bincount(view[schema.interaction].edge_index[1], minlength=num_songs).float()
    own_rows = row_of[own[0]]
    topks: dict[float, list[Tensor]] = {float(n0): [] for n0 in grid}
    step = chunk_users(2048, num_songs)
    for start in range(0, users.numel(), step):
        rows = slice(start, start + step)
        genre = genre_scores(genre_matrix, popularity, profiles[rows])
        model = user_emb[users[rows]] @ song_emb.T
        mine = (own_rows >= start) & (own_rows < start + step)
        for n0 in grid:
            blended = blend(model, genre, adaptive_weights(counts[rows], n0))
            topks[float(n0)].append(_topk_masked(blended, own_rows[mine] - start, own[1][mine], EVAL_K))
    scores = {
        n0: _metrics(torch.cat(topk), row_of[valid_pairs[0]], valid_pairs[1], num_songs)[f"ndcg@{EVAL_K}"]
        for n0, topk in topks.items()
    }
    best = max(scores.values())
    return min(n0 for n0, value in scores.items() if value == best), scores


def holdout_users(data: HeteroData, schema: Schema, fraction: float, min_interactions: int, seed: int) -> Tensor:
    """A seeded sample of users with at least ``min_interactions`` interactions."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    counts = torch.bincount(data[schema.interaction].edge_index[0], minlength=data[schema.user].num_nodes)
    eligible = (counts >= min_interactions).nonzero().flatten()
    if eligible.numel() < 2:
        raise ValueError(f"fewer than 2 users have >= {min_interactions} interactions: nothing to hold out")
    generator = torch.Generator().manual_seed(seed)
    size = max(1, int(round(fraction * eligible.numel())))
    return eligible[torch.randperm(eligible.numel(), generator=generator)[:size]].sort().values


def zero_user_embeddings(model, users: Tensor):
    """A copy of ``model`` whose id embeddings of ``users`` are zero: a new user starts from nothing
    and gets their representation from message passing alone."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        if isinstance(model, LightGCN):
            model.model.embedding.weight[users] = 0.0
        else:
            model.embeddings[model.schema.user].weight[users] = 0.0
    return model


def evaluate_cold_start(
    dataset,
    data: HeteroData,
    train_index: Tensor,
    valid_index: Tensor,
    test_index: Tensor,
    fit: Callable[[dict[str, Tensor]], nn.Module | None],
    *,
    reveal: Sequence[int] = (1, 3, 5, 10),
    genre_top: int = 3,
    n0: float | None = None,
    fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Cold-start Recall/NDCG@10 on users held out of training entirely.

    Args:
        dataset: The chain (its schema has a genre category and first plays on its interactions).
        data: The full graph.
        train_index, valid_index, test_index: The split's listens edges.
        fit: ``fit(split)`` trains a model on the split's training part (``{"train", "valid",
            "test"}`` indices into ``data``'s interactions, the held-out users removed from train and
            valid) and returns it fitted, or ``None`` for no collaborative model.
        reveal: Numbers of a held-out user's first songs (by first play) to reveal.
        genre_top: Genres a genre-only user states (the top genres of their first
            ``max(reveal)`` songs).
        n0: The adaptive weight's prior count; ``None`` chooses it on the validation pairs of
            the users that were not held out (:func:`tune_genre_prior`).
        fraction: Share of eligible users (with ``max(reveal) + 3`` interactions) to hold out.

    The model never trains on a held-out user. With ``n`` songs revealed, its collaborative
    score for the user comes from (a) *fold-in*: the mean of the model's song embeddings of those
    songs, and (b) *inductive*: the model run on the training graph plus the user's ``n``
    revealed listens edges, the user's id embedding zero, so the user's representation is the
    model's message passing from those songs. Every method ranks the whole catalogue masking the
    first ``max(reveal)`` songs and is scored on the same targets: each held-out user's songs after
    their first ``max(reveal)``.

    Rows with ``revealed = -1`` ("active_*") rank the *other* users' test songs (their training
    and validation songs masked) by genres only (profile of their training songs), the model, and
    the adaptive blend with each user's own ``n`` (training interactions): where the weight
    should lean on the collaborative signal.
    """
    schema = dataset.schema
    n_max = max(reveal)
    users = holdout_users(data, schema, fraction, n_max + 3, seed)
    listens = data[schema.interaction]
    if "first_played" not in listens:
        raise ValueError(f"the {dataset.name} graph's interactions have no first_played time: cold start needs it")
    edge_users = listens.edge_index[0]
    held = torch.isin(edge_users, users)
    keep_train = train_index[~held[train_index]]
    keep_valid = valid_index[~held[valid_index]]
    heldout = torch.cat([valid_index, test_index])
    view = dataset.view(data, keep_train, heldout)
    if torch.isin(view[schema.interaction].edge_index[0], users).any():
        raise AssertionError("a held-out user's edge reached the training graph")
    num_songs = int(data[schema.item].num_nodes)
    popularity = torch.bincount(view[schema.interaction].edge_index[1], minlength=num_songs).float()
    genre_matrix = song_genre_matrix(view, schema)
    model = fit({"train": keep_train, "valid": keep_valid, "test": test_index})

    # each held-out user's interactions (edge ids) in order of first play
    order = torch.from_numpy(np.lexsort((listens.first_played.numpy(), edge_users.numpy())))
    sorted_users = edge_users[order]
    revealed_edges: list[Tensor] = []
    targets_rows, targets_songs = [], []
    for row, user in enumerate(users.tolist()):
        start = int(torch.searchsorted(sorted_users, user))
        stop = int(torch.searchsorted(sorted_users, user, right=True))
        edges = order[start:stop]
        revealed_edges.append(edges[:n_max])
        targets_songs.append(listens.edge_index[1, edges[n_max:]])
        targets_rows.append(torch.full((stop - start - n_max,), row, dtype=torch.long))
    revealed = [listens.edge_index[1, edges] for edges in revealed_edges]
    target_rows, target_songs = torch.cat(targets_rows), torch.cat(targets_songs)
    exclude_rows = torch.arange(users.numel()).repeat_interleave(n_max)
    exclude_songs = torch.cat(revealed)

    def method_row(method: str, revealed: int, weight: float, scores: Tensor) -> dict:
        topk = _topk_masked(scores, exclude_rows, exclude_songs, EVAL_K)
        return {
            "method": method,
            "revealed": revealed,
            "genre_weight": weight,
            **_metrics(topk, target_rows, target_songs, num_songs),
        }

    rows = [method_row("most_popular", 0, 0.0, popularity.expand(users.numel(), -1))]
    stated = torch.stack([stated_genres(genre_matrix, songs, genre_top) for songs in revealed])
    rows.append(method_row(f"genres_only (top {genre_top})", 0, 1.0, genre_scores(genre_matrix, popularity, stated)))
    n0_scores: dict[float, float] = {}
    if model is not None:
        user_emb, song_emb = embed(model, view)
        fresh = zero_user_embeddings(model, users)
        if n0 is None:
            n0, n0_scores = tune_genre_prior(user_emb, song_emb, view, listens.edge_index[:, keep_valid], schema)
    n0 = 5.0 if n0 is None else n0
    for n in reveal:
        first = [songs[:n] for songs in revealed]
        profiles = torch.stack([genre_profile_of_songs(genre_matrix, songs) for songs in first])
        genre = genre_scores(genre_matrix, popularity, profiles)
        rows.append(method_row("songs_genre", n, 1.0, genre))
        if model is None:
            continue
        folded = torch.stack([song_emb[songs].mean(0) for songs in first]) @ song_emb.T
        rows.append(method_row("songs_model_foldin", n, 0.0, folded))
        grown = dataset.view(data, torch.cat([keep_train] + [edges[:n] for edges in revealed_edges]), heldout)
        user_emb, grown_song_emb = embed(fresh, grown)
        inductive = user_emb[users] @ grown_song_emb.T
        rows.append(method_row("songs_model_inductive", n, 0.0, inductive))
        weight = adaptive_weight(n, n0)
        rows.append(method_row("songs_adaptive_foldin", n, weight, blend(folded, genre, weight)))
        rows.append(method_row("songs_adaptive_inductive", n, weight, blend(inductive, genre, weight)))
    if model is not None:
        rows += _active_rows(
            data, schema, view, model, popularity, genre_matrix, train_index, valid_index, test_index, users, n0
        )
    return {
        "rows": rows,
        "heldout_users": int(users.numel()),
        "targets": int(target_songs.numel()),
        "reveal": list(reveal),
        "n0": n0,
        "n0_validation_ndcg@10": n0_scores,
        "seed": seed,
        "training_edges": int(keep_train.numel()),
    }


def _active_rows(
    data, schema, view, model, popularity, genre_matrix, train_index, valid_index, test_index, heldout, n0
) -> list[dict]:
    listens = data[schema.interaction].edge_index
    test = listens[:, test_index]
    test = test[:, ~torch.isin(test[0], heldout)]
    users = torch.unique(test[0])
    if users.numel() == 0:
        return []
    row_of, _, profiles, counts = _training_profiles(view, schema, users, genre_matrix)
    known = listens[:, torch.cat([train_index, valid_index])]
    known = known[:, row_of[known[0]] >= 0]
    genre = genre_scores(genre_matrix, popularity, profiles)
    user_emb, song_emb = embed(model, view)
    collaborative = user_emb[users] @ song_emb.T
    weights = adaptive_weights(counts, n0)
    num_songs = int(data[schema.item].num_nodes)

    def method_row(method: str, weight: float, scores: Tensor) -> dict:
        topk = _topk_masked(scores, row_of[known[0]], known[1], EVAL_K)
        return {
            "method": method,
            "revealed": -1,
            "genre_weight": weight,
            **_metrics(topk, row_of[test[0]], test[1], num_songs),
        }

    mean_n = float(counts.float().mean())
    return [
        method_row("active_most_popular", 0.0, popularity.expand(users.numel(), -1)),
        method_row("active_genre", 1.0, genre),
        method_row("active_model", 0.0, collaborative),
        method_row(
            f"active_adaptive (mean n={mean_n:.0f})", float(weights.mean()), blend(collaborative, genre, weights)
        ),
    ]


def describe_weight(n0: float, counts: Sequence[int] = (0, 1, 5, 20, 100)) -> str:
    """``w`` at a few interaction counts, for docs and metadata."""
    return ", ".join(f"n={n}: w={adaptive_weight(n, n0):.2f}" for n in counts)
