"""Playlist-completion metrics as defined for the RecSys Challenge 2018.

For a playlist with held-out tracks ``G_T`` (their artists ``G_A``) and a ranked list ``R`` (best
first, at most 500 long, never containing a track already known in the playlist):

* ``r_precision`` (the challenge's R-precision, with artist-level partial credit)::

      R-precision = (|G_T ∩ R_{1:|G_T|}| + 0.25 · |A_partial|) / |G_T|

  where ``A_partial`` is the set of *distinct* ground-truth artists ``a ∈ G_A`` such that some
  track among the first ``|G_T|`` recommendations is by ``a`` but is not itself in ``G_T``, and no
  track of ``a`` among those first ``|G_T|`` recommendations matched exactly (an artist already
  credited at track level earns no further artist credit; each artist earns 0.25 at most once).
  A recommended track contributes either full track credit or, through its artist, at most the
  0.25 partial credit, so the value stays within [0, 1].
* ``r_precision_track`` = ``|G_T ∩ R_{1:|G_T|}| / |G_T|``: the track-level part alone.
* ``recall@K`` = ``|G_T ∩ R_{1:K}| / |G_T|``.
* ``ndcg@K`` = DCG@K / IDCG@K with binary gains (track matches), DCG = sum over hits at rank i
  (1-based) of 1 / log2(i + 1), IDCG over min(K, |G_T|) hits.
* ``clicks`` = floor((rank of the first hit - 1) / 10): how many pages of 10 a user must refresh
  before a relevant track shows; 51 when no hit appears in the first 500.

Every metric is averaged over playlists with at least one held-out track. :class:`RecSysChallenge`
is the playlist chain's evaluation protocol (``core/evaluation/protocol.py``): lists of 500
tracks, R-precision as primary and validation metric, per-playlist values for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ...core.evaluation.metrics import topk_scored
from ...core.evaluation.protocol import Protocol, ScoreFn

LIST_LENGTH = 500
NO_HIT_CLICKS = 51
ARTIST_CREDIT = 0.25


def hit_matrix(topk: Tensor, rows: Tensor, relevant: Tensor, num_items: int) -> Tensor:
    """``[n, L]`` booleans: is ``topk[r, i]`` one of row ``r``'s relevant items.

    Args:
        topk: ``[n, L]`` ranked item indices (values ``>= num_items`` are padding).
        rows: ``[E]`` row of each relevant pair; relevant: ``[E]`` its item.
    """
    keys = torch.sort(rows * (num_items + 1) + relevant).values
    candidate = torch.arange(topk.size(0)).view(-1, 1) * (num_items + 1) + topk.clamp(max=num_items)
    position = torch.searchsorted(keys, candidate).clamp(max=max(keys.numel() - 1, 0))
    found = keys[position] == candidate if keys.numel() else torch.zeros_like(candidate, dtype=torch.bool)
    return found & (topk < num_items)


def artist_matches(
    topk: Tensor, hits: Tensor, num_relevant: Tensor, rows: Tensor, relevant: Tensor, track_artist: Tensor
) -> Tensor:
    """``[n]`` counts ``|A_partial|`` of the challenge's R-precision (see the module docstring).

    Args:
        topk: ``[n, L]`` ranked track indices (values ``>= len(track_artist)`` are padding).
        hits: ``[n, L]`` exact track matches (:func:`hit_matrix`).
        num_relevant: ``[n]`` held-out tracks per row (``|G_T|``).
        rows, relevant: ``[E]`` the held-out (row, track) pairs.
        track_artist: ``[num_tracks]`` artist index of each track (``-1``: unknown, never credited).
    """
    n, length = topk.shape
    num_tracks = track_artist.numel()
    if n == 0 or num_tracks == 0:
        return torch.zeros(n, dtype=torch.long)
    width = int(track_artist.max()) + 2  # key = row * width + artist, artists in 0..width-2
    artist_of = torch.cat([track_artist, torch.tensor([-1], dtype=track_artist.dtype)])
    ranked_artist = artist_of[topk.clamp(max=num_tracks)]
    row_index = torch.arange(n).view(-1, 1).expand(n, length)
    within = torch.arange(length).view(1, -1) < num_relevant.view(-1, 1)
    keys = row_index * width + ranked_artist
    truth_artist = track_artist[relevant]
    truth_keys = torch.unique(rows[truth_artist >= 0] * width + truth_artist[truth_artist >= 0])
    credited = torch.unique(keys[within & hits])  # artists already matched at track level
    candidates = torch.unique(keys[within & ~hits & (ranked_artist >= 0)])
    partial = candidates[torch.isin(candidates, truth_keys) & ~torch.isin(candidates, credited)]
    return torch.bincount(torch.div(partial, width, rounding_mode="floor"), minlength=n)


def recsys_per_row(
    hits: Tensor, num_relevant: Tensor, ks: tuple[int, ...] = (10, 50, 500), artist_credits: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-row metrics (rows with ``num_relevant > 0``) from a ``[n, L]`` hit matrix.

    ``r_precision`` (the challenge's, with artist partial credit) needs ``artist_credits``
    (:func:`artist_matches`); without them only ``r_precision_track`` is reported.
    """
    keep = num_relevant > 0
    hits, g = hits[keep].float(), num_relevant[keep].float()
    if g.numel() == 0:
        raise ValueError("no playlist with held-out tracks to evaluate")
    length = hits.size(1)
    ranks = torch.arange(1, length + 1, dtype=torch.float)
    discounts = 1.0 / torch.log2(ranks + 1)
    values: dict[str, Tensor] = {}
    for k in ks:
        kk = min(k, length)
        values[f"recall@{k}"] = hits[:, :kk].sum(1) / g
        dcg = (hits[:, :kk] * discounts[:kk]).sum(1)
        ideal_counts = torch.clamp(g, max=kk).long()
        cumulative = torch.cat([torch.zeros(1), discounts[:kk].cumsum(0)])
        values[f"ndcg@{k}"] = dcg / cumulative[ideal_counts]
    within_g = ranks.view(1, -1) <= g.view(-1, 1)
    track_hits = (hits * within_g).sum(1)
    values["r_precision_track"] = track_hits / g
    if artist_credits is not None:
        values["r_precision"] = (track_hits + ARTIST_CREDIT * artist_credits[keep].float()) / g
    first_hit = torch.where(hits.bool(), ranks.view(1, -1), torch.full_like(hits, math.inf)).min(1).values
    values["clicks"] = torch.where(
        torch.isfinite(first_hit) & (first_hit <= LIST_LENGTH),
        torch.floor((first_hit - 1) / 10),
        torch.full_like(first_hit, float(NO_HIT_CLICKS)),
    )
    return values


def recsys_metrics(
    hits: Tensor, num_relevant: Tensor, ks: tuple[int, ...] = (10, 50, 500), artist_credits: Tensor | None = None
) -> dict[str, float]:
    """Mean of :func:`recsys_per_row` over rows with ``num_relevant > 0``, and their count."""
    per_row = recsys_per_row(hits, num_relevant, ks, artist_credits)
    values = {name: float(row.mean()) for name, row in per_row.items()}
    values["playlists_evaluated"] = int(per_row["clicks"].numel())
    return values


def evaluate(
    score_fn: ScoreFn,
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

    ``playlists`` restricts evaluation to those playlists (a config's sample). ``track_artist``
    (:func:`track_artists`) adds the challenge's ``r_precision`` with artist partial credit;
    ``r_precision_track`` is always there.
    """
    rows_all = torch.unique(relevant[0])
    if playlists is not None:
        rows_all = rows_all[torch.isin(rows_all, playlists)]
    if rows_all.numel() == 0:
        raise ValueError("no playlist with held-out tracks to evaluate")
    topk = topk_scored(score_fn, rows_all, known, num_tracks, min(LIST_LENGTH, num_tracks), chunk_size)
    row_of = torch.full((int(max(rows_all.max(), relevant[0].max())) + 1,), -1, dtype=torch.long)
    row_of[rows_all] = torch.arange(rows_all.numel())
    rows = row_of[relevant[0]]
    held = rows >= 0
    rows, items = rows[held], relevant[1][held]
    hits = hit_matrix(topk, rows, items, num_tracks)
    counts = torch.bincount(rows, minlength=rows_all.numel())
    credits = artist_matches(topk, hits, counts, rows, items, track_artist) if track_artist is not None else None
    return recsys_metrics(hits, counts, ks, credits)


def track_artists(data: HeteroData, by: tuple[str, str, str] = ("track", "by", "artist")) -> Tensor:
    """``[num_tracks]`` artist index of each track (``-1`` where a track has none)."""
    artist = torch.full((data[by[0]].num_nodes,), -1, dtype=torch.long)
    edges = data[by].edge_index
    artist[edges[0]] = edges[1]
    return artist


@dataclass(frozen=True)
class RecSysChallenge(Protocol):
    """The playlist chain's protocol: 500-track lists, the challenge's metrics (module docstring)."""

    primary: str = "r_precision"
    monitor: str = "r_precision"
    ks: tuple[int, ...] = (10, 50, 500)
    valid_ks: tuple[int, ...] = (10,)
    chunk_size: int = 1024
    report_k: int = LIST_LENGTH
    table: tuple[str, ...] = (
        "r_precision",
        "r_precision_track",
        "ndcg@10",
        "ndcg@500",
        "recall@10",
        "recall@50",
        "recall@500",
        "clicks",
    )
    track_artist: Tensor | None = None

    def for_graph(self, data: HeteroData) -> RecSysChallenge:
        return replace(self, track_artist=track_artists(data))

    def topk(self, score_fn: ScoreFn, users: Tensor, exclude: Tensor, num_items: int, k: int) -> Tensor:
        return topk_scored(score_fn, users, exclude, num_items, k, self.chunk_size)

    def per_user(self, topk: Tensor, rows: Tensor, items: Tensor, num_items: int) -> dict[str, Tensor]:
        hits = hit_matrix(topk, rows, items, num_items)
        counts = torch.bincount(rows, minlength=topk.size(0))
        credits = (
            artist_matches(topk, hits, counts, rows, items, self.track_artist)
            if self.track_artist is not None
            else None
        )
        return recsys_per_row(hits, counts, self.ks, credits)

    def validate(
        self, score_fn: ScoreFn, known: Tensor, heldout: Tensor, num_items: int, users: Tensor | None = None
    ) -> dict[str, float]:
        return evaluate(score_fn, heldout, known, num_items, users, self.chunk_size, self.valid_ks, self.track_artist)
