"""Multi-task heads on a (user, item) pair's final embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class TaskHeads(nn.Module):
    r"""Binary auxiliary heads on a (user, song) pair's final embeddings, one per task.

    Each head is a two-layer MLP on the layer-normalised features
    :math:`[\mathbf{u} \odot \mathbf{s}, \mathbf{u}, \mathbf{s}]` returning one logit (the
    normalisation keeps the heads' inputs on one scale while the ranking loss moves the
    embeddings); trained with binary cross-entropy next to the ranking loss, its gradient flows into
    the shared embeddings.

    Args:
        dim: Size of the user and song embeddings.
        tasks: Task names, in the column order of :meth:`forward`'s output.
        hidden: Hidden size of every head (default ``dim``).
    """

    def __init__(self, dim: int, tasks: Sequence[str], hidden: int | None = None) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("TaskHeads needs at least one task")
        self.tasks = tuple(tasks)
        hidden = hidden or dim
        self.heads = nn.ModuleDict(
            {
                task: nn.Sequential(nn.LayerNorm(3 * dim), nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                for task in self.tasks
            }
        )

    def forward(self, user_emb: Tensor, song_emb: Tensor, users: Tensor, songs: Tensor) -> Tensor:
        """``[B, len(tasks)]`` logits of the pairs ``(users[i], songs[i])``."""
        u, s = user_emb[users], song_emb[songs]
        features = torch.cat([u * s, u, s], dim=-1)
        return torch.cat([self.heads[task](features) for task in self.tasks], dim=-1)
