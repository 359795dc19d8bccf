""":class:`torch_geometric.nn.models.LightGCN` on a chain's user-item interaction graph, propagated
with a cached sparse normalized adjacency."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn.models import LightGCN as PygLightGCN

from ..config import TrainableConfig
from ..data.graph import Schema
from .base import GraphModel
from .propagation import Adjacency, symmetric_norm


class LightGCN(GraphModel):
    """PyG's LightGCN (its id embedding and layer weights ``alpha``) over users ``0..U-1`` and
    items ``U..U+I-1`` of the homogeneous graph; only the view's (training) interaction edges
    propagate, both ways.

    A layer is ``A_hat @ x`` with ``A_hat = D^-1/2 A D^-1/2``, the sparse symmetric-normalized
    adjacency (LGConv's ``gcn_norm`` without self-loops) built once per view and cached, so a
    forward pass is ``num_layers`` CSR sparse-dense products and never materializes ``[E, d]``
    per-edge messages (:mod:`.propagation`). The numbers are PyG's ``get_embedding`` on the same
    edges up to float summation order (``tests/test_propagation.py``). With ``edge_masks`` set,
    each direction's edge values are multiplied by its relation's mask (explanations).
    """

    reads_edge_masks = True

    def __init__(self, config: TrainableConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        self.relations = (schema.interaction, schema.reverse_interaction)
        self.model = PygLightGCN(self.num_users + self.num_items, config.embedding_dim, config.num_layers)

    def homogeneous_edges(self, data: HeteroData) -> Tensor:
        """``[2, 2E]``: the view's interaction edges user -> item and item -> user, items offset by ``U``."""
        edge_index = data[self.schema.interaction].edge_index
        users, items = edge_index[0], edge_index[1] + self.num_users
        return torch.stack([torch.cat([users, items]), torch.cat([items, users])])

    def adjacency(self, data: HeteroData) -> tuple[Adjacency, Tensor]:
        """The view's normalized adjacency (pattern and per-edge values), built once per view."""

        def build() -> tuple[Adjacency, Tensor]:
            edges, nodes = self.homogeneous_edges(data), self.num_users + self.num_items
            return Adjacency(edges, nodes, nodes), symmetric_norm(edges, nodes, nodes)

        return self.adjacency_cache.get("interaction", (data[self.schema.interaction].edge_index,), build)

    def forward(self, data: HeteroData, return_attention: bool = False):
        adjacency, norm = self.adjacency(data)
        forward_mask, backward_mask = self.edge_mask(self.relations[0]), self.edge_mask(self.relations[1])
        if forward_mask is not None or backward_mask is not None:
            ones = norm.new_ones(norm.numel() // 2)
            norm = norm * torch.cat(
                [ones if forward_mask is None else forward_mask, ones if backward_mask is None else backward_mask]
            )
        x = self.model.embedding.weight
        embedding = x * self.model.alpha[0]
        for layer in range(self.config.num_layers):
            x = adjacency.spmm(norm, x)
            embedding = embedding + x * self.model.alpha[layer + 1]
        user, item = embedding[: self.num_users], embedding[self.num_users :]
        return (user, item, {}) if return_attention else (user, item)

    def ego_l2(self, users: Tensor, items: Tensor) -> Tensor:
        weight = self.model.embedding.weight
        return (weight[users].pow(2).sum() + weight[items + self.num_users].pow(2).sum()) / users.numel()
