"""Artist and genre diversity at serving time: re-rank a candidate pool of the model's best items,
and measure how diverse the lists are.

Pure functions on tensors (torch only, like :mod:`.scores`: the ``recommend`` command imports this
without any graph library). Every function works on a batch of users at once: candidates are
``[users, pool]`` item indices in score order (best first) with their ``[users, pool]`` scores,
``-inf`` marking a slot that must not be recommended (a known item, or past the catalogue).

Re-rankers (:class:`Diversify`), each picking ``k`` of a pool of ``max(50, 5 k)`` candidates
(:func:`pool_size`):

* ``none``: the plain ranking (the pool's first ``k``).
* ``artist-cap`` (:func:`artist_cap`): candidates in score order, an item skipped while its artist
  already has ``max_per_artist`` items in the list; the list fills from further down the pool, and
  when the pool runs out of allowed items, from a pool 4x as large, up to the whole catalogue
  (:func:`rerank_scores`). The cap is never exceeded: only when all the user's unseen items are
  by too few artists is the list shorter than ``k`` (trailing slots invalid), as it is for a user
  with fewer than ``k`` unseen items.
* ``mmr`` (:func:`mmr`): maximal marginal relevance (Carbonell & Goldstein 1998), greedily the
  candidate maximising ``(1 - λ) rel(i) - λ max_{j picked} sim(i, j)``, ``rel`` the user's scores
  min-max normalised over the valid candidates (1 when they are all equal), the max over an empty
  list 0. ``λ = 0`` is the plain ranking exactly (ties go to the earlier candidate).

Item-item similarity (:class:`ItemSimilarity`) is the cosine of ``f_i = [√α onehot(artist_i),
√(1-α) genres_i / |genres_i|]`` with ``α = artist_weight`` (0.5). For items with an artist and
genres, ``sim(i, j) = α [artist_i = artist_j] + (1 - α) cos(genres_i, genres_j)``: 1 for two songs of
one artist with the same genres (in the listening world a song inherits its artist's genres),
``(1 - α) |G_i ∩ G_j| / sqrt(|G_i| |G_j|)`` for songs of different artists. An item with no artist
(``-1``) or no genres is compared on the part it has (its feature renormalised); with neither it
is at similarity 0 to everything. An index without any item artists (a chain with no artist
relation) can run MMR on genres alone, not ``artist-cap`` (a clear error).

Diversity metrics: intra-list distance (:func:`mean_pairwise_distance`, the one definition the
metric report's ``ild_*`` metrics use too: mean over pairs of ``1 - sim``), distinct artists and the
most items of one artist in a list (:func:`artist_spread`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RERANKERS = ("none", "artist-cap", "mmr")
DEFAULT_MAX_PER_ARTIST = 2
DEFAULT_MMR_LAMBDA = 0.3
DEFAULT_ARTIST_WEIGHT = 0.5
MIN_POOL, POOL_FACTOR = 50, 5
MAX_RERANK_CELLS = 1 << 22  # users x pool x genres gathered at once by MMR


def pool_size(k: int) -> int:
    """Candidates a re-ranker chooses ``k`` items from: ``max(50, 5 k)``."""
    return max(MIN_POOL, POOL_FACTOR * k)


@dataclass(frozen=True)
class Diversify:
    """A re-ranker and its parameter (module docstring); ``Diversify()`` is the plain ranking."""

    method: str = "none"
    max_per_artist: int = DEFAULT_MAX_PER_ARTIST
    mmr_lambda: float = DEFAULT_MMR_LAMBDA

    def __post_init__(self) -> None:
        if self.method not in RERANKERS:
            raise ValueError(f"unknown re-ranker {self.method!r}; choose one of {', '.join(RERANKERS)}")
        if isinstance(self.max_per_artist, bool) or not isinstance(self.max_per_artist, int) or self.max_per_artist < 1:
            raise ValueError(f"max_per_artist must be an integer >= 1, got {self.max_per_artist!r}")
        if not (isinstance(self.mmr_lambda, (int, float)) and 0.0 <= self.mmr_lambda <= 1.0):
            raise ValueError(f"the MMR lambda must be in [0, 1], got {self.mmr_lambda!r}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def pool(self, k: int) -> int:
        return pool_size(k) if self.active else k

    def describe(self, k: int | None = None) -> dict:
        """What was used, for JSON output and asset metadata."""
        if self.method == "artist-cap":
            out = {"method": self.method, "max_per_artist": self.max_per_artist}
        elif self.method == "mmr":
            out = {
                "method": self.method,
                "lambda": float(self.mmr_lambda),
                "similarity": f"cosine of artist one-hot (weight {DEFAULT_ARTIST_WEIGHT:g}) and genre set",
            }
        else:
            return {"method": "none"}
        return out | ({"pool": pool_size(k)} if k is not None else {})

    def label(self) -> str:
        if self.method == "artist-cap":
            return f"artist cap {self.max_per_artist}"
        if self.method == "mmr":
            return f"MMR λ={self.mmr_lambda:g}"
        return "no re-rank"


# ------------------------------------------------------------------------------------ similarity


@dataclass(frozen=True)
class ItemSimilarity:
    """Artist and genre similarity of items (module docstring).

    Args:
        artist: ``[items]`` artist index of each item (-1: none).
        genres: ``[items, genres]`` genre membership (any non-negative weights; zero rows: none).
        artist_weight: ``α``, the artist part's share of the similarity of two fully described items.
    """

    artist: Tensor
    genres: Tensor
    artist_weight: float = DEFAULT_ARTIST_WEIGHT

    def __post_init__(self) -> None:
        if not 0.0 <= self.artist_weight <= 1.0:
            raise ValueError(f"artist_weight must be in [0, 1], got {self.artist_weight}")
        if self.genres.dim() != 2 or self.genres.size(0) != self.artist.numel():
            raise ValueError(f"genres must be [{self.artist.numel()}, genres], got {tuple(self.genres.shape)}")
        member = (self.genres > 0).float()
        has_artist, has_genre = self.artist >= 0, member.sum(1) > 0
        norm = torch.sqrt(self.artist_weight * has_artist.float() + (1.0 - self.artist_weight) * has_genre.float())
        object.__setattr__(self, "_unit_genres", member / member.sum(1, keepdim=True).sqrt().clamp(min=1.0))
        object.__setattr__(self, "_inverse_norm", torch.where(norm > 0, 1.0 / norm.clamp(min=1e-12), torch.zeros(())))

    @property
    def num_items(self) -> int:
        return self.artist.numel()

    @property
    def has_artists(self) -> bool:
        return bool((self.artist >= 0).any())

    @property
    def has_genres(self) -> bool:
        return self.genres.numel() > 0 and bool((self.genres > 0).any())

    def pairwise(self, a: Tensor, b: Tensor) -> Tensor:
        """``[users, Q, P]`` similarities of items ``a`` ``[users, Q]`` to items ``b`` ``[users, P]``
        (indices outside the catalogue, e.g. the sentinel ``num_items``, are at similarity 0)."""
        a_ok, b_ok = (a >= 0) & (a < self.num_items), (b >= 0) & (b < self.num_items)
        a, b = a.clamp(0, max(self.num_items - 1, 0)), b.clamp(0, max(self.num_items - 1, 0))
        artist_a, artist_b = self.artist[a].unsqueeze(2), self.artist[b].unsqueeze(1)
        same = ((artist_a == artist_b) & (artist_a >= 0)).float()
        genre = torch.bmm(self._unit_genres[a], self._unit_genres[b].transpose(1, 2))
        sim = self.artist_weight * same + (1.0 - self.artist_weight) * genre
        scale = (self._inverse_norm[a] * a_ok).unsqueeze(2) * (self._inverse_norm[b] * b_ok).unsqueeze(1)
        return sim * scale

    def features(self) -> Tensor:
        """The dense ``[items, artists + genres]`` vectors whose cosine :meth:`pairwise` is (for
        checks and small catalogues; :meth:`pairwise` never builds them)."""
        artists = int(self.artist.max()) + 1 if self.has_artists else 0
        onehot = torch.zeros(self.num_items, artists)
        known = self.artist >= 0
        onehot[known.nonzero().flatten(), self.artist[known]] = 1.0
        return torch.cat(
            [math.sqrt(self.artist_weight) * onehot, math.sqrt(1.0 - self.artist_weight) * self._unit_genres], dim=1
        )

    def intra_list_distance(self, topk: Tensor, k: int) -> Tensor:
        """ILD@k of each list: mean pairwise ``1 - sim`` (:func:`mean_pairwise_distance`)."""
        top = topk[:, :k]
        return mean_pairwise_distance(self.pairwise(top, top), (top >= 0) & (top < self.num_items))


def mean_pairwise_distance(similarity: Tensor, valid: Tensor) -> Tensor:
    """Intra-list distance: the mean ``1 - sim`` over the ordered pairs ``i != j`` of each list's
    valid slots (``similarity`` ``[users, k, k]``, ``valid`` ``[users, k]``); 0 for a list of fewer
    than two items. The one definition of ILD: the metric report's cosine ILD and
    :meth:`ItemSimilarity.intra_list_distance` both call it."""
    pair = (valid.unsqueeze(2) & valid.unsqueeze(1)).double()
    pair = pair * (1.0 - torch.eye(valid.size(1), dtype=torch.float64))
    pairs = pair.sum(dim=(1, 2))
    total = (similarity.double() * pair).sum(dim=(1, 2))
    return torch.where(pairs > 0, 1.0 - total / pairs.clamp(min=1), torch.zeros((), dtype=torch.float64))


def occurrence(keys: Tensor, valid: Tensor) -> Tensor:
    """For each slot of ``[users, P]`` ``keys``, how many earlier valid slots of its row hold the
    same key (a negative key, e.g. no artist, never matches; invalid slots are not counted)."""
    users, width = keys.shape
    if width == 0:
        return torch.zeros_like(keys)
    position = torch.arange(width).expand(users, width)
    # invalid and negative keys get one unique key each, past every real key
    unique = int(keys.max().clamp(min=0)) + 1 + position
    keys = torch.where(valid & (keys >= 0), keys, unique)
    order = torch.sort(keys, dim=1, stable=True).indices  # same key: in position order
    ordered = keys.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=1).values
    count = torch.empty_like(keys)
    count.scatter_(1, order, position - first)
    return count


def artist_spread(topk: Tensor, artist: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(distinct artists, most items of one artist)`` in each top-``k`` list (slots outside the
    catalogue skipped; an item without an artist counts as its own artist)."""
    top = topk[:, :k]
    valid = (top >= 0) & (top < artist.numel())
    artists = torch.where(valid, artist[top.clamp(0, artist.numel() - 1)], torch.full_like(top, -1))
    seen = occurrence(artists, valid)
    distinct = ((seen == 0) & valid).sum(1)
    return distinct, torch.where(valid, seen + 1, torch.zeros_like(seen)).max(1).values


# ------------------------------------------------------------------------------------ re-rankers


def artist_cap(candidates: Tensor, valid: Tensor, artist: Tensor, k: int, max_per_artist: int) -> tuple[Tensor, Tensor]:
    """Positions (into each row of ``candidates``) of the first ``k`` valid candidates whose artist
    has fewer than ``max_per_artist`` earlier picks: ``([users, k] positions, [users, k] valid)``."""
    if max_per_artist < 1:
        raise ValueError(f"max_per_artist must be >= 1, got {max_per_artist}")
    items = candidates.clamp(0, artist.numel() - 1)
    allowed = valid & (occurrence(torch.where(valid, artist[items], -1), valid) < max_per_artist)
    # allowed candidates first, each group in pool order
    order = torch.sort((~allowed).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    return order, allowed.gather(1, order)


def mmr(candidates: Tensor, scores: Tensor, similarity: ItemSimilarity, k: int, lam: float) -> tuple[Tensor, Tensor]:
    """Greedy maximal marginal relevance (module docstring): ``([users, k] positions, [users, k]
    valid)``. ``scores`` ``[users, P]`` are the candidates' scores, ``-inf`` for invalid ones."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the MMR lambda must be in [0, 1], got {lam}")
    users, width = candidates.shape
    k = min(k, width)
    valid = torch.isfinite(scores)
    low = torch.where(valid, scores, torch.full_like(scores, float("inf"))).min(1, keepdim=True).values
    high = torch.where(valid, scores, torch.full_like(scores, float("-inf"))).max(1, keepdim=True).values
    span = high - low
    rel = torch.where(
        span > 0, (scores - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(scores)
    )
    rel = torch.where(valid, rel, torch.full_like(rel, float("-inf")))
    rows = torch.arange(users)
    available, penalty = valid.clone(), torch.zeros_like(rel)
    positions = torch.zeros(users, k, dtype=torch.long)
    picked_ok = torch.zeros(users, k, dtype=torch.bool)
    for step in range(k):
        objective = ((1.0 - lam) * rel - lam * penalty).masked_fill(~available, float("-inf"))
        best = objective.argmax(1)  # the first maximum: ties keep pool (score) order
        positions[:, step], picked_ok[:, step] = best, available[rows, best]
        available[rows, best] = False
        if step + 1 < k and lam > 0:
            penalty = torch.maximum(penalty, similarity.pairwise(candidates[rows, best].unsqueeze(1), candidates)[:, 0])
    return positions, picked_ok


def rerank(
    candidates: Tensor,
    scores: Tensor,
    k: int,
    option: Diversify,
    similarity: ItemSimilarity,
    cells: int = MAX_RERANK_CELLS,
) -> tuple[Tensor, Tensor]:
    """Pick ``k`` of each row's candidates (``[users, P]`` item indices in score order, ``scores``
    ``-inf`` where invalid) with ``option``'s re-ranker: ``([users, k] positions into the rows,
    [users, k] valid)``. MMR runs on chunks of users (``cells`` bounds users x pool x genres)."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    valid = torch.isfinite(scores)
    k = min(k, candidates.size(1))
    if option.method == "none":
        positions = torch.arange(k).expand(candidates.size(0), k)
        return positions, valid[:, :k]
    if option.method == "artist-cap":
        if not similarity.has_artists:
            raise ValueError(
                "--diversify artist-cap needs each item's artist, and this model's serving index has "
                "none (a chain without an artist relation); use --diversify mmr (genres only)"
            )
        return artist_cap(candidates, valid, similarity.artist, k, option.max_per_artist)
    if not similarity.has_artists and not similarity.has_genres:
        raise ValueError("--diversify mmr needs item artists or genres, and this model's serving index has neither")
    step = max(1, cells // max(candidates.size(1) * max(similarity.genres.size(1), 1), 1))
    parts = [
        mmr(candidates[s : s + step], scores[s : s + step], similarity, k, option.mmr_lambda)
        for s in range(0, candidates.size(0), step)
    ]
    if not parts:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.bool)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def rerank_scores(scores: Tensor, k: int, option: Diversify, similarity: ItemSimilarity) -> tuple[Tensor, Tensor]:
    """Top-``k`` of full ``[users, items]`` scores (``-inf``: masked) under ``option``: ``([users, k]
    items, [users, k] valid)``. The candidates are each row's ``pool_size(k)`` best; a row the
    artist cap leaves short while unseen items remain past its pool is re-ranked from a pool 4x as
    large (up to the whole catalogue), so the cap fills from further down the ranking."""
    width = scores.size(1)
    pool = min(option.pool(k), width)
    top = scores.topk(pool, dim=1)
    positions, ok = rerank(top.indices, top.values, k, option, similarity)
    items = top.indices.gather(1, positions)
    if option.method != "artist-cap":
        return items, ok
    # short rows whose pool is all unseen items: more candidates may follow
    rows = ((ok.sum(1) < ok.size(1)) & torch.isfinite(top.values[:, -1])).nonzero().flatten()
    while rows.numel() and pool < width:
        pool = min(4 * pool, width)
        top = scores[rows].topk(pool, dim=1)
        positions, more = rerank(top.indices, top.values, k, option, similarity)
        items[rows], ok[rows] = top.indices.gather(1, positions), more
        rows = rows[(more.sum(1) < more.size(1)) & torch.isfinite(top.values[:, -1])]
    return items, ok
