"""The graph-attention recommenders, every relation name taken from the chain's schema.

* :class:`BasicGAT` (``gat_basic``) - user, item and main-category id embeddings refined by one
  GATv2 layer over the interaction and the item's main category (song-artist), residual.
* :class:`GenreAwareGAT` (``gat_enhanced``) - the enhanced heterogeneous GAT: id embeddings for
  users, items and every side type, ``num_layers`` attention layers (PyG ``GATConv``) over every
  relation (interaction edges attend with their attributes) whose attention reweights LightGCN's
  symmetric degree normalisation, optional residual connections, dropout, and a LightGCN-style
  mean over layer outputs.
* :class:`PlaylistGAT` (``playlist_gat``) - GATv2 layers over the interaction, categories and
  context relations (playlist-track, track-artist, artist-genre), residual with LayerNorm, mean of
  layer outputs; optionally an item->item co-occurrence relation (the ItemKNN signal) and users
  built from their items only (no free user embedding).
* :class:`TagFriendGAT` (``tag_friend_gat``) - attention without feature transforms
  (:class:`LightAttentionConv`, LightGCN-like at initialisation) or GATv2 over the interaction,
  the item categories (tags) and the social relation (friends), with a learned weight per relation
  and layer, and a LightGCN-style layer mean.

Every model returns ``(user, item)`` embeddings, and with ``return_attention=True`` also a dict
``"<layer>/<src>__<rel>__<dst>" -> (edge_index, alpha [E, heads])``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv, GATv2Conv
from torch_geometric.utils import softmax

from ..config import BasicGATConfig, GenreAwareGATConfig, PlaylistGATConfig, TagFriendGATConfig
from ..data.graph import EdgeType, Schema, relation_key, reverse
from .base import IdEmbeddings
from .propagation import Adjacency, relation_degrees

Attention = dict[str, tuple[Tensor, Tensor]]


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with a mask from ``torch.rand`` (``F.dropout`` draws it with
    ``bernoulli_``, 3-4x slower on CPU, which made it a sixth of an enhanced-GAT step)."""
    if not training or p <= 0.0:
        return x
    return x * ((torch.rand_like(x) >= p) * (1.0 / (1.0 - p))) if p < 1.0 else x * 0.0


def both_ways(edge_types: Sequence[EdgeType]) -> list[EdgeType]:
    """Each relation followed by its reverse."""
    return [r for edge_type in edge_types for r in (edge_type, reverse(edge_type))]


def layer_mean(outputs: Sequence[dict[str, Tensor]], node_type: str) -> Tensor:
    """LightGCN-style: the mean of one node type's embeddings over the layer outputs."""
    return torch.stack([x[node_type] for x in outputs]).mean(0)


def attend(
    conv: nn.Module,
    x: tuple[Tensor, Tensor],
    edge_index: Tensor,
    edge_attr: Tensor | None,
    attention: Attention | None,
    key: str,
) -> Tensor:
    """The messages of one attention conv; with ``attention``, its coefficients stored there under ``key``."""
    if attention is None:
        return conv(x, edge_index, edge_attr=edge_attr)
    message, (index, alpha) = conv(x, edge_index, edge_attr=edge_attr, return_attention_weights=True)
    attention[key] = (index, alpha)
    return message


class HeteroGATLayer(nn.Module):
    r"""One attention layer over several relations.

    For every relation :math:`r = (s, \cdot, t)` a :class:`~torch_geometric.nn.GATv2Conv`
    computes messages from nodes of type :math:`s` to nodes of type :math:`t`; a node sums the
    messages of all relations that reach it:

    .. math::
        \mathbf{m}_i = \sum_{r \ni i} \sum_{j \in \mathcal{N}_r(i)} \alpha^{r}_{ij} \mathbf{W}^{r} \mathbf{x}_j

    Args:
        edge_types: The relations this layer passes messages along.
        dim: Input and output size of every node type (divisible by ``heads``).
        heads: Attention heads per relation (concatenated).
        dropout: Dropout on the attention coefficients.
        edge_dims: Size of the edge attributes of a relation, if it has any.
    """

    def __init__(
        self,
        edge_types: Sequence[EdgeType],
        dim: int,
        heads: int = 1,
        dropout: float = 0.0,
        edge_dims: dict[EdgeType, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} must be divisible by heads {heads}")
        edge_dims = edge_dims or {}
        self.edge_types = list(edge_types)
        self.convs = nn.ModuleDict(
            {
                relation_key(edge_type): GATv2Conv(
                    (dim, dim),
                    dim // heads,
                    heads=heads,
                    concat=True,
                    dropout=dropout,
                    add_self_loops=False,
                    edge_dim=edge_dims.get(edge_type),
                )
                for edge_type in self.edge_types
            }
        )

    def forward(
        self, x_dict: dict[str, Tensor], data: HeteroData, attention: Attention | None = None, prefix: str = ""
    ) -> dict[str, Tensor]:
        """Messages per destination node type; fills ``attention`` when given."""
        out: dict[str, Tensor] = {}
        for edge_type in self.edge_types:
            src, _, dst = edge_type
            store = data[edge_type]
            conv = self.convs[relation_key(edge_type)]
            edge_attr = store.get("edge_attr") if conv.edge_dim else None
            message = attend(
                conv,
                (x_dict[src], x_dict[dst]),
                store.edge_index,
                edge_attr,
                attention,
                prefix + relation_key(edge_type),
            )
            out[dst] = out[dst] + message if dst in out else message
        return out


class EdgeAttrGATConv(GATConv):
    r""":class:`~torch_geometric.nn.GATConv` with a cheaper edge-attribute attention term.

    GATConv adds :math:`\mathbf{a}_e^\top \mathbf{W}_e \mathbf{e}_{ij}` to each edge's attention
    logit by projecting every edge's attributes to ``heads * out_channels`` values first; this
    computes the same term as :math:`(\mathbf{W}_e^\top \mathbf{a}_e)^\top \mathbf{e}_{ij}`, one
    ``[E, edge_dim] x [edge_dim, heads]`` product (the attention is otherwise GATConv's own).
    """

    def edge_update(
        self,
        alpha_j: Tensor,
        alpha_i: Tensor | None,
        edge_attr: Tensor | None,
        index: Tensor,
        ptr: Tensor | None,
        dim_size: int | None,
    ) -> Tensor:
        alpha = alpha_j if alpha_i is None else alpha_j + alpha_i
        if index.numel() == 0:
            return alpha
        if edge_attr is not None and self.lin_edge is not None:
            alpha = alpha + (edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr) @ self.edge_projection()
        alpha = F.leaky_relu(alpha, self.negative_slope)
        alpha = softmax(alpha, index, ptr, dim_size)
        return dropout(alpha, self.dropout, self.training)

    def edge_projection(self) -> Tensor:
        r"""``[edge_dim, heads]``: :math:`\mathbf{W}_e^\top \mathbf{a}_e` per head."""
        weight = self.lin_edge.weight.view(self.heads, self.out_channels, -1)
        return (weight * self.att_edge.view(self.heads, self.out_channels, 1)).sum(1).t()


class NormalizedHeteroGATLayer(nn.Module):
    r"""One attention layer over several relations with LightGCN's symmetric normalisation.

    For every relation :math:`r = (s, \cdot, t)` a :class:`~torch_geometric.nn.GATConv`
    (``heads`` heads averaged, listens edges attending with their attributes) gives attention
    coefficients :math:`\alpha^{r}_{ij}` (softmax over the :math:`d^r_i` neighbours of
    :math:`i`), and the message to :math:`i` is

    .. math::
        \mathbf{m}^{r}_i = \sqrt{d^r_i} \sum_{j \in \mathcal{N}_r(i)}
            \alpha^{r}_{ij} \frac{\mathbf{W}^{r} \mathbf{x}_j}{\sqrt{d^r_j}}

    With uniform attention (:math:`\alpha^r_{ij} = 1 / d^r_i`) and :math:`\mathbf{W}^r = I` this
    is exactly LightGCN's :math:`\sum_j \mathbf{x}_j / \sqrt{d^r_i d^r_j}`; the attention
    reweights a node's neighbours without changing that scale. ``transform=False`` fixes
    :math:`\mathbf{W}^r` to the identity (the attention vectors are still learned), so messages
    are the neighbours' embeddings as in LightGCN. A node sums the messages of all relations
    that reach it.

    The convs supply the parameters and the coefficients (per-node logits gathered to
    ``[E, heads]``), and the sum is a sparse product whose values are
    :math:`\sqrt{d^r_i}\,\alpha^r_{ij}`: without ``transform``, :meth:`stacked` takes one product
    for every relation (heads averaged); with it, :meth:`forward` one per relation and head. No
    ``[E, d]`` message is materialized; both equal the convs' own message passing up to float
    summation order (``tests/test_propagation.py``).

    Args:
        edge_types: The relations this layer passes messages along.
        dim: Input and output size of every node type.
        heads: Attention heads per relation (averaged).
        dropout: Dropout on the attention coefficients.
        edge_dims: Size of the edge attributes of a relation, if it has any.
        transform: Learn a linear map :math:`\mathbf{W}^r` per relation (default ``False``).
    """

    def __init__(
        self,
        edge_types: Sequence[EdgeType],
        dim: int,
        heads: int = 1,
        dropout: float = 0.0,
        edge_dims: dict[EdgeType, int] | None = None,
        transform: bool = False,
    ) -> None:
        super().__init__()
        edge_dims = edge_dims or {}
        self.edge_types = list(edge_types)
        self.transform = transform
        self.convs = nn.ModuleDict(
            {
                relation_key(edge_type): EdgeAttrGATConv(
                    dim,
                    dim,
                    heads=heads,
                    concat=False,
                    dropout=dropout,
                    add_self_loops=False,
                    edge_dim=edge_dims.get(edge_type),
                    bias=False,
                )
                for edge_type in self.edge_types
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs.values():
            conv.reset_parameters()
            if not self.transform:
                identity = torch.eye(conv.out_channels).repeat(conv.heads, 1)
                with torch.no_grad():
                    conv.lin.weight.copy_(identity)
                conv.lin.weight.requires_grad_(False)

    def stacked(
        self,
        x: Tensor,
        graph: StackedRelations,
        edge_attrs: dict[EdgeType, Tensor] | None = None,
        attention: Attention | None = None,
        prefix: str = "",
        masks: dict[EdgeType, Tensor] | None = None,
    ) -> Tensor:
        """Without ``transform``: the messages into every node of the stacked embeddings ``x``
        (``[N, d]``, rows as in ``graph``), every relation's in one sparse product. Each relation's
        attention logit is ``s_j (x_j . a_src) + x_i . a_dst`` (+ its edge-attribute term), one
        ``[N, d] x [d, relations * heads]`` product gathered per edge, softmax per (relation,
        target); the same numbers as :meth:`forward`."""
        if self.transform:
            raise ValueError("stacked aggregation needs transform: false (one message map per relation otherwise)")
        edge_attrs, masks = edge_attrs or {}, masks or {}
        convs = [self.convs[relation_key(r)] for r in graph.relations]
        heads = convs[0].heads
        att_src = torch.cat([conv.att_src[0] for conv in convs])  # [relations * heads, d]
        att_dst = torch.cat([conv.att_dst[0] for conv in convs])
        columns = graph.relation.unsqueeze(1) * heads + torch.arange(heads, device=x.device)
        width = len(convs) * heads
        logits = (x @ att_src.T).flatten()[graph.src.unsqueeze(1) * width + columns] * graph.src_scale.unsqueeze(1) + (
            x @ att_dst.T
        ).flatten()[graph.dst.unsqueeze(1) * width + columns]
        extra = []
        for conv, relation, (start, stop) in zip(convs, graph.relations, graph.spans):
            if conv.edge_dim and relation in edge_attrs:
                extra.append(edge_attrs[relation] @ conv.edge_projection())
            else:
                extra.append(logits.new_zeros(stop - start, heads))
        logits = F.leaky_relu(logits + torch.cat(extra), convs[0].negative_slope)
        alpha = dropout(
            softmax(logits, graph.group, num_nodes=len(convs) * graph.num_nodes), convs[0].dropout, self.training
        )
        values = alpha.mean(1) * graph.scale
        if any(r in masks for r in graph.relations):
            values = values * torch.cat(
                [
                    masks[r] if r in masks else values.new_ones(stop - start)
                    for r, (start, stop) in zip(graph.relations, graph.spans)
                ]
            )
        if attention is not None:
            for relation, (start, stop) in zip(graph.relations, graph.spans):
                attention[prefix + relation_key(relation)] = (
                    torch.stack(
                        [
                            graph.src[start:stop] - graph.offsets[relation[0]],
                            graph.dst[start:stop] - graph.offsets[relation[2]],
                        ]
                    ),
                    alpha[start:stop],
                )
        return graph.adjacency.spmm(values, x)

    def forward(
        self,
        x_dict: dict[str, Tensor],
        data: HeteroData,
        relations: dict[EdgeType, NormalizedRelation],
        edge_attrs: dict[EdgeType, Tensor] | None = None,
        attention: Attention | None = None,
        prefix: str = "",
        masks: dict[EdgeType, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """With ``transform``: messages per destination node type, one sparse product per relation
        and head; fills ``attention`` when given. ``relations`` holds each relation's cached
        pattern and degrees (:func:`normalized_relations`); ``masks[r]`` multiplies relation ``r``'s
        messages (explanations). Without ``transform`` use :meth:`stacked`."""
        if not self.transform:
            raise ValueError(
                "per-relation aggregation learns a message map per relation; without transform use stacked()"
            )
        edge_attrs, masks = edge_attrs or {}, masks or {}
        out: dict[str, Tensor] = {}
        for edge_type in self.edge_types:
            src, _, dst = edge_type
            conv, relation = self.convs[relation_key(edge_type)], relations[edge_type]
            heads, channels = conv.heads, conv.out_channels
            edge_index = data[edge_type].edge_index
            h_src = conv.lin(x_dict[src] * relation.src_scale.unsqueeze(-1)).view(-1, heads, channels)
            logits_src = (h_src * conv.att_src).sum(-1)[edge_index[0]]
            logits_dst = (conv.lin(x_dict[dst]).view(-1, heads, channels) * conv.att_dst).sum(-1)[edge_index[1]]
            edge_attr = edge_attrs.get(edge_type) if conv.edge_dim else None
            alpha = conv.edge_update(logits_src, logits_dst, edge_attr, edge_index[1], None, x_dict[dst].size(0))
            if attention is not None:
                attention[prefix + relation_key(edge_type)] = (edge_index, alpha)
            values = alpha * relation.dst_scale.unsqueeze(-1)
            if edge_type in masks:
                values = values * masks[edge_type].unsqueeze(-1)
            message = sum(relation.adjacency.spmm(values[:, h], h_src[:, h].contiguous()) for h in range(heads)) / heads
            out[dst] = out[dst] + message if dst in out else message
        return out


@dataclass
class NormalizedRelation:
    """A relation's sparse pattern, its sources' ``d^-1/2`` and its edges' ``sqrt(d_dst)``."""

    adjacency: Adjacency
    src_scale: Tensor
    dst_scale: Tensor


def normalized_relations(data: HeteroData, edge_types: Sequence[EdgeType]) -> dict[EdgeType, NormalizedRelation]:
    """Per relation: its :class:`~.propagation.Adjacency` and LightGCN's degree scales (degrees
    within the relation, clamped to 1)."""
    relations = {}
    for edge_type in edge_types:
        src, _, dst = edge_type
        edge_index = data[edge_type].edge_index
        num_src, num_dst = int(data[src].num_nodes), int(data[dst].num_nodes)
        src_degree, dst_degree = relation_degrees(edge_index, num_src, num_dst)
        relations[edge_type] = NormalizedRelation(
            Adjacency(edge_index, num_src, num_dst), src_degree.rsqrt(), dst_degree.sqrt()[edge_index[1]]
        )
    return relations


@dataclass
class StackedRelations:
    """Several relations as one graph over every node type stacked (node ``k`` of type ``t`` is row
    ``offsets[t] + k``): the edges of all relations concatenated in relation order, each with its
    relation's degree scales, so one sparse product aggregates every relation at once.

    ``spans[i]`` is relation ``i``'s slice of the edges; ``group`` numbers (relation, target) pairs,
    the softmax groups of the attention."""

    relations: tuple[EdgeType, ...]
    offsets: dict[str, int]
    num_nodes: int
    adjacency: Adjacency
    src: Tensor
    dst: Tensor
    relation: Tensor
    group: Tensor
    scale: Tensor  # d_src^-1/2 * d_dst^1/2 per edge (degrees within the edge's relation, clamped to 1)
    src_scale: Tensor  # d_src^-1/2 per edge
    spans: list[tuple[int, int]]

    @classmethod
    def of(cls, data: HeteroData, relations: Sequence[EdgeType], node_types: Sequence[str]) -> StackedRelations:
        offsets, total = {}, 0
        for node_type in node_types:
            offsets[node_type], total = total, total + int(data[node_type].num_nodes)
        sources, targets, kinds, src_scales, dst_scales, spans, start = [], [], [], [], [], [], 0
        for index, (src, _, dst) in enumerate(relations):
            edge_index = data[src, _, dst].edge_index
            src_degree, dst_degree = relation_degrees(edge_index, int(data[src].num_nodes), int(data[dst].num_nodes))
            sources.append(edge_index[0] + offsets[src])
            targets.append(edge_index[1] + offsets[dst])
            kinds.append(torch.full((edge_index.size(1),), index, dtype=torch.long))
            src_scales.append(src_degree.rsqrt()[edge_index[0]])
            dst_scales.append(dst_degree.sqrt()[edge_index[1]])
            spans.append((start, start + edge_index.size(1)))
            start += edge_index.size(1)
        src, dst, relation = torch.cat(sources), torch.cat(targets), torch.cat(kinds)
        src_scale = torch.cat(src_scales)
        return cls(
            tuple(relations),
            offsets,
            total,
            Adjacency(torch.stack([src, dst]), total, total),
            src,
            dst,
            relation,
            relation * total + dst,
            src_scale * torch.cat(dst_scales),
            src_scale,
            spans,
        )


def standardized(edge_attr: Tensor) -> Tensor:
    """Each attribute column shifted to mean 0 and scaled to standard deviation 1."""
    centered = edge_attr - edge_attr.mean(0, keepdim=True)
    return centered if edge_attr.size(0) < 2 else centered / edge_attr.std(0, keepdim=True).clamp(min=1e-6)


class LightAttentionConv(nn.Module):
    r"""Graph attention without feature transforms, LightGCN-style: node :math:`i` receives

    .. math::
        \mathbf{h}_i = \big\Vert_{k=1}^{H} \sum_{j \in \mathcal{N}(i)} \alpha^k_{ij} \mathbf{x}^k_j,\qquad
        \alpha^k_{ij} = \operatorname{softmax}_j\, \mathrm{LeakyReLU}\big(\mathbf{a}^{k\top}_s \mathbf{x}^k_j
        + \mathbf{a}^{k\top}_t \mathbf{x}^k_i + b^k w_{ij} + c^k \log d_j\big)

    over ``heads`` slices :math:`\mathbf{x}^k` of the embeddings; :math:`w_{ij}` is the edge weight
    (log play count or log tag count) and :math:`d_j` the source's degree in the relation. With
    ``a = b = 0`` and ``c = -1/2`` (the initial values) the weights are :math:`\propto d_j^{-1/2}`,
    normalised per target - close to LightGCN's symmetric normalisation; training learns where to
    deviate from it.
    """

    def __init__(self, dim: int, heads: int = 1, weighted: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.att_src = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.att_weight = nn.Parameter(torch.zeros(heads)) if weighted else None
        self.att_degree = nn.Parameter(torch.full((heads,), -0.5))

    def forward(
        self,
        x_src: Tensor,
        x_dst: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        adjacency: Adjacency | None = None,
    ):
        """``(out [N_dst, d], alpha [E, heads])``; the sum is one sparse product per head over
        ``adjacency`` (the relation's cached pattern; built here when not given)."""
        src, dst = edge_index
        hs = x_src.view(-1, self.heads, self.head_dim)
        hd = x_dst.view(-1, self.heads, self.head_dim)
        degree = torch.bincount(src, minlength=x_src.size(0)).clamp(min=1).float().log()
        logits = (
            (hs * self.att_src).sum(-1)[src] + (hd * self.att_dst).sum(-1)[dst] + degree[src, None] * self.att_degree
        )
        if self.att_weight is not None and edge_weight is not None:
            logits = logits + edge_weight[:, None] * self.att_weight
        alpha = softmax(nn.functional.leaky_relu(logits, 0.2), dst, num_nodes=x_dst.size(0))
        alpha = dropout(alpha, self.dropout, self.training)
        if adjacency is None:
            adjacency = Adjacency(edge_index, x_src.size(0), x_dst.size(0))
        if self.heads == 1:
            return adjacency.spmm(alpha[:, 0], x_src), alpha
        return torch.cat([adjacency.spmm(alpha[:, h], hs[:, h].contiguous()) for h in range(self.heads)], 1), alpha


class BasicGAT(IdEmbeddings):
    """User, item and main-category embeddings refined by one GATv2 attention layer.

    The layer passes messages item -> user, user -> item, category -> item and item -> category;
    the output adds the layer's messages to the id embedding (residual), so a node with no
    training edge still has an embedding. The main category is the schema's first (song -by-> artist).
    """

    def __init__(self, config: BasicGATConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        main = list(schema.categories.values())[:1]
        self.relations = (schema.reverse_interaction, schema.interaction, *both_ways(main))
        self.init_embeddings((schema.user, schema.item, *(r[2] for r in main)), num_nodes, config.embedding_dim)
        self.layer = HeteroGATLayer(self.relations, config.embedding_dim, heads=config.heads, dropout=config.dropout)

    def forward(self, data: HeteroData, return_attention: bool = False):
        x = {t: self.embeddings[t].weight for t in self.node_types}
        attention: Attention | None = {} if return_attention else None
        messages = self.layer(x, data, attention, prefix="layer0/")
        user = x[self.schema.user] + messages[self.schema.user]
        item = x[self.schema.item] + messages[self.schema.item]
        return (user, item, attention) if return_attention else (user, item)


class GenreAwareGAT(IdEmbeddings):
    r"""Enhanced heterogeneous graph attention recommender.

    Users, items and every side type (artist, genre, ...) each get an id embedding.
    ``num_layers`` layers of :class:`NormalizedHeteroGATLayer` pass messages along every relation
    both ways (interaction, item categories, usable context): graph attention (PyG ``GATConv``)
    over each relation, interaction edges attending with their standardized attributes (listening:
    log play count, mean completion, recency), scaled by LightGCN's symmetric degree
    normalisation. Each layer is residual (optional) with dropout:

    .. math::
        \mathbf{h}^{(l+1)} = \mathbf{h}^{(l)} + \mathrm{dropout}\big(\mathbf{m}^{(l)}\big)
        \quad\text{or, without residual,}\quad
        \mathbf{h}^{(l+1)} = \mathrm{dropout}\big(\mathbf{m}^{(l)}\big)

    and the final user and item embeddings are the mean of
    :math:`\mathbf{h}^{(0)}, \dots, \mathbf{h}^{(L)}` as in LightGCN. Side nodes carry items'
    context: after one layer a song holds its artist's and genres' embeddings (attention-pooled),
    after two a user holds the artists and genres of the songs they play, so items with few
    users still rank by the categories a user plays. ``heads`` are averaged, ``dropout`` acts on the
    attention coefficients and the layer outputs, ``use_edge_attr`` reads the interaction's
    ``schema.interaction_attr_dim`` ``edge_attr`` columns, and ``transform`` learns a linear message map
    per relation and layer (default: messages are the neighbours' embeddings, only the attention is learned).
    """

    reads_edge_masks = True

    def __init__(self, config: GenreAwareGATConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        self.relations = (
            schema.reverse_interaction,
            schema.interaction,
            *both_ways([*schema.categories.values(), *schema.usable_context(num_nodes)]),
        )
        self.init_embeddings(schema.node_types(num_nodes), num_nodes, config.embedding_dim)
        self.edge_dim = schema.interaction_attr_dim if config.use_edge_attr else 0
        edge_dims = (
            {schema.interaction: self.edge_dim, schema.reverse_interaction: self.edge_dim} if self.edge_dim else {}
        )
        # the last layer's side outputs would be unused: it only passes messages into users and items
        last = tuple(r for r in self.relations if r[2] in (schema.user, schema.item))
        self.layers = nn.ModuleList(
            NormalizedHeteroGATLayer(
                self.relations if depth < config.num_layers - 1 else last,
                config.embedding_dim,
                config.heads,
                config.dropout,
                edge_dims,
                config.transform,
            )
            for depth in range(config.num_layers)
        )
        self.residual = config.residual

    def _edge_attrs(self, data: HeteroData) -> dict[EdgeType, Tensor]:
        """The interaction's standardized attributes both ways (once per view)."""
        if not self.edge_dim:
            return {}
        relations = (self.schema.interaction, self.schema.reverse_interaction)
        for edge_type in relations:
            if data[edge_type].get("edge_attr") is None:
                raise ValueError(f"edge type {edge_type} has no edge_attr; set use_edge_attr: false")
        return self.adjacency_cache.get(
            "edge_attrs",
            tuple(data[r].edge_attr for r in relations),
            lambda: {r: standardized(data[r].edge_attr.float()) for r in relations},
        )

    def forward(self, data: HeteroData, return_attention: bool = False):
        attention: Attention | None = {} if return_attention else None
        edge_attrs = self._edge_attrs(data)
        sources = tuple(data[r].edge_index for r in self.relations)
        if not self.config.transform:  # every relation of a layer in one sparse product over the stacked nodes
            graphs = self.adjacency_cache.get(
                "stacked",
                sources,
                lambda: {
                    tuple(layer.edge_types): StackedRelations.of(data, layer.edge_types, self.node_types)
                    for layer in self.layers
                },
            )
            x = torch.cat([self.embeddings[t].weight for t in self.node_types])
            outputs = [x]
            for depth, layer in enumerate(self.layers):
                graph = graphs[tuple(layer.edge_types)]
                messages = dropout(
                    layer.stacked(x, graph, edge_attrs, attention, f"layer{depth}/", self.edge_masks),
                    self.config.dropout,
                    self.training,
                )
                x = x + messages if self.residual else messages
                outputs.append(x)
            mean = torch.stack(outputs).mean(0)
            user = mean[graph.offsets[self.schema.user] :][: self.num_users]
            item = mean[graph.offsets[self.schema.item] :][: self.num_items]
            return (user, item, attention) if return_attention else (user, item)
        x = {t: self.embeddings[t].weight for t in self.node_types}
        relations = self.adjacency_cache.get("relations", sources, lambda: normalized_relations(data, self.relations))
        outputs = [x]
        for depth, layer in enumerate(self.layers):
            messages = layer(x, data, relations, edge_attrs, attention, f"layer{depth}/", self.edge_masks)
            messages = {t: dropout(m, self.config.dropout, self.training) for t, m in messages.items()}
            x = {t: x[t] + m if self.residual else m for t, m in messages.items()}
            outputs.append(x)
        user, item = layer_mean(outputs, self.schema.user), layer_mean(outputs, self.schema.item)
        return (user, item, attention) if return_attention else (user, item)


def cooccurrence_edges(view: HeteroData, schema: Schema, k: int, shrink: float) -> Tensor:
    """``[2, E]`` item->item edges: for each item, its ``k`` most similar items by the shrunk
    cosine of :meth:`~.baselines.ItemKNN.similarity` on the view's (training) interactions; ties
    and zero similarities dropped. Source row 0 is the neighbour, row 1 the receiving item."""
    from .baselines import item_similarity

    similarity = item_similarity(view, schema, shrink).tocsr()
    similarity.eliminate_zeros()
    sources, targets = [], []
    indptr, indices, values = similarity.indptr, similarity.indices, similarity.data
    for item in np.nonzero(np.diff(indptr))[0]:
        start, stop = indptr[item], indptr[item + 1]
        keep = np.argsort(-values[start:stop], kind="stable")[:k]
        sources.append(indices[start:stop][keep])
        targets.append(np.full(keep.size, item))
    if not sources:
        return torch.empty((2, 0), dtype=torch.long)
    return torch.from_numpy(np.stack([np.concatenate(sources), np.concatenate(targets)])).long()


class PlaylistGAT(IdEmbeddings):
    """Id embeddings for users, items and side nodes refined by GATv2 layers over every relation
    of the view (interaction, categories and usable context, both ways), each layer residual with
    a LayerNorm per node type; returns the mean of the layer outputs.

    Options: ``cooccurrence_k`` adds an item->item relation along each item's ``k`` most
    co-occurring items in the training interactions - the signal ItemKNN scores with (computed
    once per view); ``user_ids=False`` drops the free user embedding, so a user (playlist) is
    represented only by what its training items send it (inductive).
    """

    def __init__(self, config: PlaylistGATConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        node_types = schema.node_types(num_nodes)
        relations = [schema.reverse_interaction, schema.interaction]
        relations += both_ways([*schema.categories.values(), *schema.usable_context(num_nodes)])
        self.cooccurs = (schema.item, "co_occurs", schema.item)
        if config.cooccurrence_k:
            relations.append(self.cooccurs)
        self.relations = tuple(relations)
        self.init_embeddings(
            tuple(t for t in node_types if t != schema.user or config.user_ids), num_nodes, config.embedding_dim
        )
        self.node_types = node_types
        dim = config.embedding_dim
        self.layers = nn.ModuleList(
            HeteroGATLayer(relations, dim, heads=config.heads, dropout=config.dropout) for _ in range(config.num_layers)
        )
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(dim) for t in node_types}) for _ in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self._cooccurrence: tuple[Tensor, Tensor] | None = None  # (the view's interaction edges, co-occurrence edges)

    def _with_cooccurrence(self, view: HeteroData) -> HeteroData:
        if not self.config.cooccurrence_k:
            return view
        interactions = view[self.schema.interaction].edge_index
        if self._cooccurrence is None or self._cooccurrence[0] is not interactions:  # the reference keeps the id unique
            edges = cooccurrence_edges(view, self.schema, self.config.cooccurrence_k, self.config.cooccurrence_shrink)
            self._cooccurrence = (interactions, edges)
        extended = copy.copy(view)
        extended[self.cooccurs].edge_index = self._cooccurrence[1]
        return extended

    def forward(self, view: HeteroData, return_attention: bool = False):
        view = self._with_cooccurrence(view)
        user_type, item_type = self.schema.user, self.schema.item
        x = {t: self.embeddings[t].weight for t in self.node_types if t in self.embeddings}
        if not self.config.user_ids:
            x[user_type] = self.embeddings[item_type].weight.new_zeros(self.num_users, self.embedding_dim)
        attention: Attention | None = {} if return_attention else None
        outputs = [x]
        for depth, (layer, norms) in enumerate(zip(self.layers, self.norms)):
            messages = layer(x, view, attention, prefix=f"layer{depth}/")
            x = {t: h + self.dropout(norms[t](messages[t])) if t in messages else h for t, h in x.items()}
            outputs.append(x)
        # without user ids the all-zero start carries nothing
        user = layer_mean(outputs if self.config.user_ids else outputs[1:], user_type)
        item = layer_mean(outputs, item_type)
        return (user, item, attention) if return_attention else (user, item)


class TagFriendGAT(IdEmbeddings):
    """Heterogeneous GAT over the interaction, the item categories (Last.fm: tags) and the social
    relation (friends): a node sums the messages of all its relations with a learned weight per
    relation and layer (side relations start at ``side_weight``), and the output is a
    LightGCN-style mean over the layer outputs. ``conv: light`` (default) is
    :class:`LightAttentionConv` (relations with an ``edge_weight`` attend with its log);
    ``conv: gatv2`` uses PyG's ``GATv2Conv`` with a residual."""

    def __init__(self, config: TagFriendGATConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        relations = [schema.interaction, schema.reverse_interaction]
        if config.use_categories:
            relations += both_ways(list(schema.categories.values()))
        if config.use_social and schema.social is not None:
            relations.append(schema.social)
        self.relations = tuple(relations)
        self.weighted = {r for r in relations if r != schema.social}
        dim, heads = config.embedding_dim, config.heads
        self.init_embeddings(tuple(sorted({t for r in relations for t in (r[0], r[2])})), num_nodes, dim)
        # a learned weight per relation and layer; the side relations start at side_weight
        main = (schema.interaction, schema.reverse_interaction)
        self.relation_weights = nn.Parameter(
            torch.tensor([[1.0 if r in main else config.side_weight for r in relations]] * config.num_layers)
        )
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    relation_key(r): LightAttentionConv(dim, heads, r in self.weighted, config.dropout)
                    if config.conv == "light"
                    else GATv2Conv(
                        dim,
                        dim // heads,
                        heads=heads,
                        dropout=config.dropout,
                        add_self_loops=False,
                        edge_dim=1 if r in self.weighted else None,
                        bias=False,
                    )
                    for r in relations
                }
            )
            for _ in range(config.num_layers)
        )

    def forward(self, graph: HeteroData, return_attention: bool = False):
        x = {t: e.weight for t, e in self.embeddings.items()}
        outputs = [x]
        attention = {}
        for depth, layer in enumerate(self.layers):
            new = {t: torch.zeros_like(v) for t, v in x.items()}
            for r, relation in enumerate(self.relations):
                store = graph[relation]
                weight = (
                    torch.log1p(store.edge_weight) if relation in self.weighted and "edge_weight" in store else None
                )
                conv = layer[relation_key(relation)]
                src, dst = relation[0], relation[2]
                if self.config.conv == "light":
                    adjacency = self.adjacency_cache.get(
                        relation,
                        (store.edge_index,),
                        lambda: Adjacency(store.edge_index, graph[src].num_nodes, graph[dst].num_nodes),  # noqa: B023 - called at once
                    )
                    result, alpha = conv(x[src], x[dst], store.edge_index, weight, adjacency)
                    index = store.edge_index
                else:
                    edge_attr = None if weight is None else weight[:, None]
                    result, (index, alpha) = conv(
                        (x[src], x[dst]), store.edge_index, edge_attr=edge_attr, return_attention_weights=True
                    )
                if return_attention:
                    attention[f"layer{depth}/{relation_key(relation)}"] = (index, alpha)
                new[dst] = new[dst] + self.relation_weights[depth, r] * result
            # light: LightGCN-style propagation (the layer mean below combines depths); gatv2: residual
            x = new if self.config.conv == "light" else {t: new[t] + x[t] for t in x}
            outputs.append(x)
        user, item = layer_mean(outputs, self.schema.user), layer_mean(outputs, self.schema.item)
        return (user, item, attention) if return_attention else (user, item)
