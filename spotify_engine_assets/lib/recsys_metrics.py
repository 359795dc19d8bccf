"""Playlist-completion metrics as defined for the RecSys Challenge 2018 (track level).

For a playlist with held-out tracks G and a ranked list R (best first, at most 500 long,
never containing a track already known in the playlist):

* ``R-precision`` = |G ∩ R[:|G|]| / |G|  (the challenge also gives 0.25 artist-level partial
  credit; this implementation is the track-level part only),
* ``Recall@K`` = |G ∩ R[:K]| / |G|,
* ``NDCG@K`` = DCG@K / IDCG@K with binary gains, DCG = sum over hits at rank i (1-based) of
  1 / log2(i + 1), IDCG over min(K, |G|) hits,
* ``clicks`` = floor((rank of the first hit - 1) / 10): how many pages of 10 a user must
  refresh before a relevant track shows; 51 when no hit appears in the first 500.

Every metric is averaged over playlists with at least one held-out track.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LIST_LENGTH = 500
NO_HIT_CLICKS = 51


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


def recsys_metrics(hits: Tensor, num_relevant: Tensor, ks: tuple[int, ...] = (10, 50, 500)) -> dict[str, float]:
    """Mean metrics over rows with ``num_relevant > 0`` from a ``[n, L]`` hit matrix."""
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
    values["r_precision"] = float(((hits * within_g).sum(1) / g).mean())
    first_hit = torch.where(hits.bool(), ranks.view(1, -1), torch.full_like(hits, math.inf)).min(1).values
    clicks = torch.where(
        torch.isfinite(first_hit) & (first_hit <= LIST_LENGTH),
        torch.floor((first_hit - 1) / 10),
        torch.full_like(first_hit, float(NO_HIT_CLICKS)),
    )
    values["clicks"] = float(clicks.mean())
    values["playlists_evaluated"] = int(n)
    return values
