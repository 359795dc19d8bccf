"""Every recommender of every chain behind one protocol (:mod:`.base`): build one from its config."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..data.graph import Schema, num_nodes_of
from .base import FitResult, GraphModel, Recommender, ScoreFn, sample_users
from .baselines import CLOSED_FORM
from .gat import BasicGAT, GenreAwareGAT, PlaylistGAT, TagFriendGAT
from .heads import TaskHeads
from .lightgcn import LightGCN

MODEL_CLASSES: dict[str, type[Recommender]] = {
    **CLOSED_FORM,
    "lightgcn": LightGCN,
    "gat_basic": BasicGAT,
    "gat_enhanced": GenreAwareGAT,
    "playlist_gat": PlaylistGAT,
    "tag_friend_gat": TagFriendGAT,
}


def build_model(config: ModelConfig, schema: Schema, num_nodes: dict[str, int]) -> Recommender:
    """The model a config names, seeded by the config.

    A config that weights a task gets a ``task_heads`` submodule (:class:`TaskHeads`, part of the
    state dict), built after the model so the model's own initialisation does not change; one with
    ``fusion`` gets the ``fusion_weight`` buffer its training sets.
    """
    torch.manual_seed(config.seed)
    model = MODEL_CLASSES[config.model](config, schema, num_nodes)
    if config.trainable and config.tasks:
        model.task_heads = TaskHeads(config.embedding_dim, tuple(config.tasks))
    if config.trainable and config.fusion is not None:
        model.enable_fusion()
    return model


def load_model(config: ModelConfig, schema: Schema, view, state: dict) -> Recommender:
    """A trained model from its config and stored state, ready to score on ``view`` (closed-form
    models refit on it: their fit is deterministic)."""
    model = build_model(config, schema, num_nodes_of(view))
    model.load_state_dict(state)
    if isinstance(model, GraphModel):
        model.eval()
    return model.prepare(view)


def embed(model: Recommender, view) -> tuple:
    """``(user, item)`` embeddings of a model prepared on ``view`` (None for models without them)."""
    return model.prepare(view).factors()


__all__ = [
    "MODEL_CLASSES",
    "FitResult",
    "GraphModel",
    "Recommender",
    "ScoreFn",
    "TaskHeads",
    "build_model",
    "embed",
    "load_model",
    "sample_users",
]
