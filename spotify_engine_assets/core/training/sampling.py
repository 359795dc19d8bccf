"""Negative sampling: items a user has not interacted with in training."""

from __future__ import annotations

import torch
from torch import Tensor


def known_keys(pairs: Tensor, num_items: int) -> Tensor:
    """Sorted ``user * num_items + item`` keys of ``[2, E]`` pairs (what :func:`sample_negatives` avoids)."""
    return torch.sort(pairs[0] * num_items + pairs[1]).values


def _is_known(users: Tensor, items: Tensor, keys: Tensor, num_items: int) -> Tensor:
    wanted = users * num_items + items
    position = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
    return keys[position] == wanted


def sample_negatives(
    users: Tensor, keys: Tensor, num_items: int, generator: torch.Generator, rounds: int = 20
) -> Tensor:
    """One item per user that the user has not interacted with in training.

    ``keys`` are the sorted ``user * num_items + item`` keys of training pairs (:func:`known_keys`).
    Uniform rejection sampling, vectorized; the rare draws still clashing after ``rounds`` (users
    who interacted with most of the catalogue) are drawn exactly from the items that user lacks.
    """
    negatives = torch.randint(num_items, users.shape, generator=generator)
    for _ in range(rounds):
        clash = _is_known(users, negatives, keys, num_items)
        if not clash.any():
            return negatives
        negatives[clash] = torch.randint(num_items, (int(clash.sum()),), generator=generator)
    for position in torch.nonzero(_is_known(users, negatives, keys, num_items)).flatten().tolist():
        user = int(users[position])
        played = keys[(keys >= user * num_items) & (keys < (user + 1) * num_items)] - user * num_items
        unplayed = torch.ones(num_items, dtype=torch.bool)
        unplayed[played] = False
        candidates = torch.nonzero(unplayed).flatten()
        if candidates.numel() == 0:
            raise ValueError(f"user index {user} has interacted with every item in training: no negative exists")
        negatives[position] = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
    return negatives
