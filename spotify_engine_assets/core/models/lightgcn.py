""":class:`torch_geometric.nn.models.LightGCN` on a chain's user-item interaction graph."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn.models import LightGCN as PygLightGCN

from ..config import TrainableConfig
from ..data.graph import Schema
from .base import GraphModel


class LightGCN(GraphModel):
    """PyG's LightGCN over users ``0..U-1`` and items ``U..U+I-1`` of the homogeneous graph; only
    the view's (training) interaction edges propagate, both ways. The homogeneous edge index is
    built once per view and cached."""

    def __init__(self, config: TrainableConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        self.relations = (schema.interaction, schema.reverse_interaction)
        self.model = PygLightGCN(self.num_users + self.num_items, config.embedding_dim, config.num_layers)
        self._cached: tuple[tuple, Tensor] | None = None

    def reset_cache(self) -> None:
        self._cached = None

    def _homogeneous_edges(self, data: HeteroData) -> Tensor:
        edge_index = data[self.schema.interaction].edge_index
        key = (id(edge_index), edge_index.data_ptr(), edge_index.size(1))
        if self._cached is None or self._cached[0] != key:
            users, items = edge_index[0], edge_index[1] + self.num_users
            self._cached = (key, torch.stack([torch.cat([users, items]), torch.cat([items, users])]))
        return self._cached[1]

    def forward(self, data: HeteroData, return_attention: bool = False):
        embedding = self.model.get_embedding(self._homogeneous_edges(data))
        user, item = embedding[: self.num_users], embedding[self.num_users :]
        return (user, item, {}) if return_attention else (user, item)

    def ego_l2(self, users: Tensor, items: Tensor) -> Tensor:
        weight = self.model.embedding.weight
        return (weight[users].pow(2).sum() + weight[items + self.num_users].pow(2).sum()) / users.numel()
