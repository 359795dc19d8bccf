"""Splits as index tensors into a graph's interaction edges, for every chain."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TRAIN, VALID, TEST = 0, 1, 2


def labels_to_indices(labels: np.ndarray | Tensor) -> dict[str, Tensor]:
    """``{"train": idx, "valid": idx, "test": idx}`` (int64 tensors) of per-edge labels (0 train, 1 valid, 2 test)."""
    labels = labels.numpy() if isinstance(labels, Tensor) else labels
    return {
        name: torch.from_numpy(np.flatnonzero(labels == value).astype(np.int64))
        for name, value in (("train", TRAIN), ("valid", VALID), ("test", TEST))
    }


def check_partition(indices: dict[str, Tensor], num_edges: int, cover: bool = True) -> dict[str, int]:
    """Disjointness and (with ``cover``) coverage: every edge in exactly one part. Returns the
    violation counts."""
    counts = torch.zeros(num_edges, dtype=torch.long)
    out_of_range = 0
    for index in indices.values():
        valid = (index >= 0) & (index < num_edges)
        out_of_range += int((~valid).sum())
        counts.index_add_(0, index[valid], torch.ones(int(valid.sum()), dtype=torch.long))
    counts_ = {"uncovered": int((counts == 0).sum())} if cover else {}
    return {**counts_, "duplicated": int((counts > 1).sum()), "out_of_range": out_of_range}
