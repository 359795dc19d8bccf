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

Every metric is averaged over playlists with at least one held-out track.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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


def recsys_metrics(
    hits: Tensor, num_relevant: Tensor, ks: tuple[int, ...] = (10, 50, 500), artist_credits: Tensor | None = None
) -> dict[str, float]:
    """Mean metrics over rows with ``num_relevant > 0`` from a ``[n, L]`` hit matrix.

    ``r_precision`` (the challenge's, with artist partial credit) needs ``artist_credits``
    (:func:`artist_matches`); without them only ``r_precision_track`` is reported.
    """
    keep = num_relevant > 0
    hits, g = hits[keep].float(), num_relevant[keep].float()
    if g.numel() == 0:
        raise ValueError("no playlist with held-out tracks to evaluate")
    n, length = hits.shape
    ranks = torch.arange(1, length + 1, dtype=torch.float)
    discounts = 1.0 / torch.log2(ranks + 1)
    values: dict[str, float] = {}
    for k in ks:
        kk = min(k, length)
        values[f"recall@{k}"] = float((hits[:, :kk].sum(1) / g).mean())
        dcg = (hits[:, :kk] * discounts[:kk]).sum(1)
        ideal_counts = torch.clamp(g, max=kk).long()
        cumulative = torch.cat([torch.zeros(1), discounts[:kk].cumsum(0)])
        idcg = cumulative[ideal_counts]
        values[f"ndcg@{k}"] = float((dcg / idcg).mean())
    within_g = ranks.view(1, -1) <= g.view(-1, 1)
    track_hits = (hits * within_g).sum(1)
    values["r_precision_track"] = float((track_hits / g).mean())
    if artist_credits is not None:
        partial = artist_credits[keep].float()
        values["r_precision"] = float(((track_hits + ARTIST_CREDIT * partial) / g).mean())
    first_hit = torch.where(hits.bool(), ranks.view(1, -1), torch.full_like(hits, math.inf)).min(1).values
    clicks = torch.where(
        torch.isfinite(first_hit) & (first_hit <= LIST_LENGTH),
        torch.floor((first_hit - 1) / 10),
        torch.full_like(first_hit, float(NO_HIT_CLICKS)),
    )
    values["clicks"] = float(clicks.mean())
    values["playlists_evaluated"] = int(n)
    return values
