"""The scores a ranking blends, on plain tensors: the adaptive genre weight, genre-conditioned
popularity, a user's genre profile and the blend (formulas in :mod:`.cold_start`).

This module imports torch only (no PyTorch Geometric, no model code), so the ``recommend``
command can rank from a serving index without loading the graph libraries.
"""

from __future__ import annotations

import torch
from torch import Tensor


def standardize(values: Tensor) -> Tensor:
    """Zero mean, unit standard deviation over the last dimension (constant rows become 0); the
    same z-score as ``core.models.base.standardize``, kept here so serving needs no model import."""
    return (values - values.mean(-1, keepdim=True)) / values.std(-1, keepdim=True).clamp(min=1e-12)


def adaptive_weight(interactions: int, n0: float) -> float:
    """Genre weight ``w = n0 / (n0 + n)``; ``n0 = 0`` gives 0 (model only) except when ``n = 0`` (genres only)."""
    if n0 < 0 or interactions < 0:
        raise ValueError(f"n0 and the interaction count must be >= 0, got n0={n0}, n={interactions}")
    if interactions == 0:
        return 1.0
    return float(n0) / (float(n0) + float(interactions))


def adaptive_weights(interactions: Tensor, n0: float) -> Tensor:
    """:func:`adaptive_weight` of every count in ``interactions``."""
    return torch.tensor([adaptive_weight(int(n), n0) for n in interactions.tolist()])


def blend(model_score: Tensor, genre_score: Tensor, weight: float | Tensor) -> Tensor:
    """``(1 - w) z(model) + w z(genre)``; ``w`` is 1 or 0 at the ends (the other part is dropped).

    ``weight`` may be one value or one per row (``[users]``) of ``[users, songs]`` scores."""
    if isinstance(weight, Tensor):
        weight = weight.view(-1, 1)
        genre, model = standardize(genre_score), standardize(model_score)
        return torch.where(weight >= 1.0, genre, (1.0 - weight) * model + weight * genre)
    if weight >= 1.0:
        return standardize(genre_score)
    if weight <= 0.0:
        return standardize(model_score)
    return (1.0 - weight) * standardize(model_score) + weight * standardize(genre_score)


def genre_matrix_of(song_genres: Tensor, num_songs: int, num_genres: int) -> Tensor:
    """``[songs, genres]`` with ``q_s(g) = 1 / |genres(s)|`` on a song's genres, from ``[2, E]``
    (song, genre) pairs (rows of untagged songs are 0)."""
    matrix = torch.zeros(num_songs, num_genres)
    matrix[song_genres[0], song_genres[1]] = 1.0
    return matrix / matrix.sum(1, keepdim=True).clamp(min=1.0)


def genre_profile_of_songs(genre_matrix: Tensor, songs: Tensor) -> Tensor:
    """A distribution over genres: each song's unit weight spread over its genres (zeros if none)."""
    profile = genre_matrix[songs].sum(0) if songs.numel() else torch.zeros(genre_matrix.size(1))
    total = profile.sum()
    return profile / total if total > 0 else profile


def genre_scores(genre_matrix: Tensor, popularity: Tensor, profile: Tensor) -> Tensor:
    """``G(s)`` for one profile ``[genres]`` or many ``[users, genres]``: genre-conditioned popularity.

    An empty profile (no genre known) gets plain smoothed popularity, ``(c_s + 1) / sum (c + 1)``."""
    weighted = genre_matrix * (popularity + 1.0).unsqueeze(1)  # [songs, genres]
    per_genre = weighted / weighted.sum(0, keepdim=True).clamp(min=1e-12)  # P(s | g)
    scores = profile @ per_genre.T
    empty = profile.sum(-1) <= 0
    if empty.any():
        prior = (popularity + 1.0) / (popularity + 1.0).sum()
        scores = torch.where(empty.unsqueeze(-1), prior.expand_as(scores), scores) if scores.dim() > 1 else prior
    return scores
