"""Per-interaction training inputs read from the interaction edges' own attributes: loss weights
and multi-task labels. Only the edges passed in are read (the training edges for training, the
held-out test edges for a task head's AUC), so no normalisation ever sees a held-out edge.

The interaction store may carry ``play_count``, ``mean_completion`` and ``last_played`` (seconds);
a config that needs a column the chain's graph lacks fails before training, naming config and field.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import ModelConfig
from ..data.graph import Schema

WEIGHT_COLUMNS = {
    "weight_completion": "mean_completion",
    "weight_play_count": "play_count",
    "weight_recency": "last_played",
}
TASK_COLUMNS = {"complete": ("task_complete_weight", "mean_completion"), "repeat": ("task_repeat_weight", "play_count")}


def interaction_weights(config: ModelConfig, data: HeteroData, schema: Schema, train_index: Tensor) -> Tensor | None:
    """Per-interaction loss weights of the *training* edges ``train_index`` (None: unweighted).

    ``w_e = 1 + a_c * completion_e + a_p * log1p(plays_e) / max log1p(plays) + a_r * 0.5 ** (age_e / half_life)``
    (``age_e`` in days before the latest training interaction), normalised to mean 1 over the
    training edges, so the loss scale (and the learning rate's meaning) stays that of the plain loss.

    Raises:
        ValueError: the config weights a column the graph does not have (before any training).
    """
    if not (config.trainable and config.weighted):
        return None
    store = data[schema.interaction]
    relation = schema.interaction[1]
    missing = [
        f"{field} needs {relation}.{column}"
        for field, column in WEIGHT_COLUMNS.items()
        if getattr(config, field) and column not in store
    ]
    if missing:
        raise ValueError(
            f"config {config.name!r}: the graph lacks a column for the weighted loss: {'; '.join(missing)}"
        )
    weight = torch.ones(train_index.numel(), dtype=torch.float64)
    if config.weight_completion:
        weight += config.weight_completion * store.mean_completion[train_index].double().clamp(0.0, 1.0)
    if config.weight_play_count:
        log_plays = torch.log1p(store.play_count[train_index].double().clamp(min=0.0))
        weight += config.weight_play_count * log_plays / log_plays.max().clamp(min=1e-12)
    if config.weight_recency:
        last = store.last_played[train_index].double()
        weight += config.weight_recency * torch.pow(0.5, ((last.max() - last) / 86400.0) / config.half_life_days)
    return (weight / weight.mean()).float()


def task_labels(config: ModelConfig, data: HeteroData, schema: Schema, index: Tensor) -> Tensor | None:
    """``[len(index), T]`` 0/1 labels of the config's task heads for the interaction edges ``index``
    (None: no task head); columns follow ``config.tasks``. "complete" = ``mean_completion >=
    complete_threshold``, "repeat" = ``play_count >= repeat_min_plays``; each label reads its own edge.

    Raises:
        ValueError: a task head needs a column the graph does not have (before any training).
    """
    if not (config.trainable and config.tasks):
        return None
    store = data[schema.interaction]
    relation = schema.interaction[1]
    missing = [
        f"{TASK_COLUMNS[t][0]} needs {relation}.{TASK_COLUMNS[t][1]}"
        for t in config.tasks
        if TASK_COLUMNS[t][1] not in store
    ]
    if missing:
        raise ValueError(f"config {config.name!r}: the graph lacks a column for a task head: {'; '.join(missing)}")
    thresholds = {"complete": config.complete_threshold, "repeat": config.repeat_min_plays}
    columns = [store[TASK_COLUMNS[task][1]][index].double() >= thresholds[task] for task in config.tasks]
    return torch.stack(columns, dim=1).float()


def training_inputs(
    config: ModelConfig, data: HeteroData, schema: Schema, train_index: Tensor
) -> dict[str, Tensor | None]:
    """The trainer's ``weights`` and ``task_labels`` of ``config`` for the training edges ``train_index``
    of ``data`` (None where the config does not use them)."""
    return {
        "weights": interaction_weights(config, data, schema, train_index),
        "task_labels": task_labels(config, data, schema, train_index),
    }
