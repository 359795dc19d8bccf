"""Recommender models on the listening graph.

Every trainable model maps the message-passing graph (training listens edges only, see
:func:`spotify_engine_assets.lib.graph.message_passing_graph`) to one embedding per user and
per song; a (user, song) pair scores as the dot product of the two. That shared interface lets
one training and evaluation harness serve them all:

* :class:`BasicGATRecommender` - user, song and artist id embeddings and one attention layer
  (GATv2) over listens and song-artist edges.
* :class:`GenreAwareGAT` - the enhanced heterogeneous GAT: user, song, artist and genre
  embeddings, ``num_layers`` attention layers (PyG ``GATConv``) over every relation (listens
  edges attend with their play-count / completion / recency attributes) whose attention
  reweights LightGCN's symmetric degree normalisation, optional residual connections, dropout,
  and a LightGCN-style mean over layer outputs. Returns its attention weights on request.
* :class:`LightGCNRecommender` - :class:`torch_geometric.nn.models.LightGCN` over the
  user-song bipartite graph.
* :class:`MostPopular` - the non-parametric reference: songs ranked by training play count.

Multi-task: :class:`TaskHeads` (built by ``lib.training.build_model`` when a config weights a
task) adds binary heads ("will complete", "will repeat") that score a (user, song) pair from the
model's final embeddings; ranking stays the dot product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv, GATv2Conv
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import softmax

from .graph import BY, HAS, LISTENS, REV_BY, REV_HAS, REV_LISTENS

EdgeType = tuple[str, str, str]
Attention = dict[str, tuple[Tensor, Tensor]]


def _relation_key(edge_type: EdgeType) -> str:
    return "__".join(edge_type)


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
                _relation_key(edge_type): GATv2Conv(
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

    def reset_parameters(self) -> None:
        for conv in self.convs.values():
            conv.reset_parameters()

    def forward(
        self,
        x_dict: dict[str, Tensor],
        data: HeteroData,
        attention: Attention | None = None,
        prefix: str = "",
    ) -> dict[str, Tensor]:
        """Messages per destination node type; fills ``attention`` when given."""
        out: dict[str, Tensor] = {}
        for edge_type in self.edge_types:
            src, _, dst = edge_type
            store = data[edge_type]
            conv = self.convs[_relation_key(edge_type)]
            edge_attr = store.get("edge_attr") if conv.edge_dim else None
            if attention is None:
                message = conv((x_dict[src], x_dict[dst]), store.edge_index, edge_attr=edge_attr)
            else:
                message, (index, alpha) = conv(
                    (x_dict[src], x_dict[dst]), store.edge_index, edge_attr=edge_attr, return_attention_weights=True
                )
                attention[prefix + _relation_key(edge_type)] = (index, alpha)
            out[dst] = out[dst] + message if dst in out else message
        return out


class _EmbeddingRecommender(nn.Module):
    """Id embeddings per node type and the shared scoring / regularization interface."""

    node_types: tuple[str, ...]

    def __init__(self, num_nodes: dict[str, int], node_types: tuple[str, ...], embedding_dim: int) -> None:
        super().__init__()
        self.node_types = node_types
        self.embedding_dim = embedding_dim
        self.embeddings = nn.ModuleDict({t: nn.Embedding(num_nodes[t], embedding_dim) for t in node_types})
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.1)

    def ego_l2(self, users: Tensor, songs: Tensor) -> Tensor:
        """Squared L2 norm of the id embeddings involved in a batch (mean per pair)."""
        return (self.embeddings["user"](users).pow(2).sum() + self.embeddings["song"](songs).pow(2).sum()) / users.numel()

    @staticmethod
    def score(user_emb: Tensor, song_emb: Tensor, users: Tensor, songs: Tensor) -> Tensor:
        return (user_emb[users] * song_emb[songs]).sum(-1)


class BasicGATRecommender(_EmbeddingRecommender):
    """User, song and artist embeddings refined by one GATv2 attention layer.

    The layer passes messages song -> user, user -> song, artist -> song and song -> artist;
    the output adds the layer's messages to the id embedding (residual), so a node with no
    training edge still has an embedding.

    Args:
        num_nodes: Node count per type (``user``, ``song``, ``artist``).
        embedding_dim: Size of every embedding (default 64).
        heads: Attention heads (default 1).
        dropout: Attention dropout (default 0.0).
    """

    relations = (REV_LISTENS, LISTENS, BY, REV_BY)

    def __init__(self, num_nodes: dict[str, int], embedding_dim: int = 64, heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__(num_nodes, ("user", "song", "artist"), embedding_dim)
        self.layer = HeteroGATLayer(self.relations, embedding_dim, heads=heads, dropout=dropout)

    def forward(self, data: HeteroData, return_attention: bool = False):
        x = {t: self.embeddings[t].weight for t in self.node_types}
        attention: Attention | None = {} if return_attention else None
        messages = self.layer(x, data, attention, prefix="layer0/")
        user = x["user"] + messages["user"]
        song = x["song"] + messages["song"]
        return (user, song, attention) if return_attention else (user, song)


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
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.view(-1, 1)
            weight = self.lin_edge.weight.view(self.heads, self.out_channels, -1)
            projection = (weight * self.att_edge.view(self.heads, self.out_channels, 1)).sum(1)
            alpha = alpha + edge_attr @ projection.t()
        alpha = F.leaky_relu(alpha, self.negative_slope)
        alpha = softmax(alpha, index, ptr, dim_size)
        return F.dropout(alpha, p=self.dropout, training=self.training)


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
                _relation_key(edge_type): EdgeAttrGATConv(
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

    def forward(
        self,
        x_dict: dict[str, Tensor],
        data: HeteroData,
        degrees: dict[EdgeType, tuple[Tensor, Tensor]],
        edge_attrs: dict[EdgeType, Tensor] | None = None,
        attention: Attention | None = None,
        prefix: str = "",
    ) -> dict[str, Tensor]:
        """Messages per destination node type; fills ``attention`` when given.

        ``degrees[r]`` holds the (source, destination) degrees of relation ``r``, clamped to 1.
        """
        edge_attrs = edge_attrs or {}
        out: dict[str, Tensor] = {}
        for edge_type in self.edge_types:
            src, _, dst = edge_type
            conv = self.convs[_relation_key(edge_type)]
            src_degree, dst_degree = degrees[edge_type]
            x_src = x_dict[src] * src_degree.rsqrt().unsqueeze(-1)
            edge_attr = edge_attrs.get(edge_type) if conv.edge_dim else None
            edge_index = data[edge_type].edge_index
            if attention is None:
                message = conv((x_src, x_dict[dst]), edge_index, edge_attr=edge_attr)
            else:
                message, (index, alpha) = conv(
                    (x_src, x_dict[dst]), edge_index, edge_attr=edge_attr, return_attention_weights=True
                )
                attention[prefix + _relation_key(edge_type)] = (index, alpha)
            message = message * dst_degree.sqrt().unsqueeze(-1)
            out[dst] = out[dst] + message if dst in out else message
        return out


def relation_degrees(data: HeteroData, edge_types: Sequence[EdgeType]) -> dict[EdgeType, tuple[Tensor, Tensor]]:
    """(source out-degree, destination in-degree) per relation, as floats clamped to at least 1."""
    degrees = {}
    for edge_type in edge_types:
        src, _, dst = edge_type
        edge_index = data[edge_type].edge_index
        src_degree = torch.bincount(edge_index[0], minlength=data[src].num_nodes).clamp(min=1).float()
        dst_degree = torch.bincount(edge_index[1], minlength=data[dst].num_nodes).clamp(min=1).float()
        degrees[edge_type] = (src_degree, dst_degree)
    return degrees


def standardized(edge_attr: Tensor) -> Tensor:
    """Each attribute column shifted to mean 0 and scaled to standard deviation 1."""
    if edge_attr.size(0) < 2:
        return edge_attr - edge_attr.mean(0, keepdim=True)
    return (edge_attr - edge_attr.mean(0, keepdim=True)) / edge_attr.std(0, keepdim=True).clamp(min=1e-6)


class GenreAwareGAT(_EmbeddingRecommender):
    r"""Enhanced genre-aware heterogeneous graph attention recommender.

    Node types user, song, artist and genre each get an id embedding. ``num_layers`` layers of
    :class:`NormalizedHeteroGATLayer` pass messages along all six relations (listens both ways,
    song-artist both ways, song-genre both ways): graph attention (PyG ``GATConv``) over each
    relation, listens edges attending with their standardized attributes (log play count, mean
    completion, recency), scaled by LightGCN's symmetric degree normalisation. Each layer is
    residual (optional) with dropout:

    .. math::
        \mathbf{h}^{(l+1)} = \mathbf{h}^{(l)} + \mathrm{dropout}\big(\mathbf{m}^{(l)}\big)
        \quad\text{or, without residual,}\quad
        \mathbf{h}^{(l+1)} = \mathrm{dropout}\big(\mathbf{m}^{(l)}\big)

    and the final user and song embeddings are the mean of
    :math:`\mathbf{h}^{(0)}, \dots, \mathbf{h}^{(L)}` as in LightGCN. Artist and genre nodes
    carry songs' context: after one layer a song holds its artist's and genres' embeddings
    (attention-pooled), after two a user holds the artists and genres of the songs they play,
    so songs with few listeners still rank by the genres and artists a user plays.

    Args:
        num_nodes: Node count per type.
        hidden_dim: Embedding and hidden size (default 64).
        num_layers: Attention layers (default 2).
        heads: Attention heads per relation, averaged (default 2).
        dropout: Dropout on attention coefficients and layer outputs (default 0.1).
        residual: Add each layer's output to its input (default ``True``).
        edge_dim: Size of listens edge attributes; ``0`` ignores them (default 3).
        transform: Learn a linear message map per relation and layer (default ``False``:
            messages are the neighbours' embeddings, only the attention is learned).
    """

    relations = (REV_LISTENS, LISTENS, BY, REV_BY, HAS, REV_HAS)

    def __init__(
        self,
        num_nodes: dict[str, int],
        hidden_dim: int = 64,
        num_layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        residual: bool = True,
        edge_dim: int = 3,
        transform: bool = False,
    ) -> None:
        super().__init__(num_nodes, ("user", "song", "artist", "genre"), hidden_dim)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.edge_dim = edge_dim
        edge_dims = {LISTENS: edge_dim, REV_LISTENS: edge_dim} if edge_dim else {}
        # the last layer's artist and genre outputs would be unused: it only passes messages
        # into users and songs
        last = tuple(r for r in self.relations if r[2] in ("user", "song"))
        self.layers = nn.ModuleList(
            NormalizedHeteroGATLayer(
                self.relations if depth < num_layers - 1 else last,
                hidden_dim,
                heads=heads,
                dropout=dropout,
                edge_dims=edge_dims,
                transform=transform,
            )
            for depth in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.residual = residual

    def _edge_attrs(self, data: HeteroData) -> dict[EdgeType, Tensor]:
        if not self.edge_dim:
            return {}
        attrs = {}
        for edge_type in (LISTENS, REV_LISTENS):
            edge_attr = data[edge_type].get("edge_attr")
            if edge_attr is None:
                raise ValueError(f"edge type {edge_type} has no edge_attr; build the model with edge_dim=0")
            attrs[edge_type] = standardized(edge_attr.float())
        return attrs

    def forward(self, data: HeteroData, return_attention: bool = False):
        x = {t: self.embeddings[t].weight for t in self.node_types}
        attention: Attention | None = {} if return_attention else None
        degrees = relation_degrees(data, self.relations)
        edge_attrs = self._edge_attrs(data)
        user_layers, song_layers = [x["user"]], [x["song"]]
        for depth, layer in enumerate(self.layers):
            messages = layer(x, data, degrees, edge_attrs, attention, prefix=f"layer{depth}/")
            updated = {}
            for node_type, message in messages.items():
                update = self.dropout(message)
                updated[node_type] = x[node_type] + update if self.residual else update
            x = updated
            user_layers.append(x["user"])
            song_layers.append(x["song"])
        user = torch.stack(user_layers).mean(0)
        song = torch.stack(song_layers).mean(0)
        return (user, song, attention) if return_attention else (user, song)


class LightGCNRecommender(nn.Module):
    """:class:`torch_geometric.nn.models.LightGCN` on the user-song bipartite graph.

    Users take node indices ``0..U-1`` and songs ``U..U+S-1`` in PyG's homogeneous model;
    only (training) listens edges propagate.

    Args:
        num_nodes: Node count per type (``user`` and ``song`` used).
        embedding_dim: Embedding size (default 64).
        num_layers: Propagation layers (default 3).
    """

    def __init__(self, num_nodes: dict[str, int], embedding_dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.num_users = num_nodes["user"]
        self.num_songs = num_nodes["song"]
        self.model = LightGCN(self.num_users + self.num_songs, embedding_dim, num_layers)
        self._cached_key: tuple[int, int] | None = None
        self._edge_index: Tensor | None = None

    def _homogeneous_edges(self, data: HeteroData) -> Tensor:
        edge_index = data[LISTENS].edge_index
        key = (edge_index.data_ptr(), edge_index.size(1))
        if self._cached_key != key:
            users, songs = edge_index[0], edge_index[1] + self.num_users
            self._edge_index = torch.stack([torch.cat([users, songs]), torch.cat([songs, users])])
            self._cached_key = key
        return self._edge_index

    def forward(self, data: HeteroData, return_attention: bool = False):
        embedding = self.model.get_embedding(self._homogeneous_edges(data))
        user, song = embedding[: self.num_users], embedding[self.num_users :]
        return (user, song, {}) if return_attention else (user, song)

    def ego_l2(self, users: Tensor, songs: Tensor) -> Tensor:
        weight = self.model.embedding.weight
        return (weight[users].pow(2).sum() + weight[songs + self.num_users].pow(2).sum()) / users.numel()

    score = staticmethod(_EmbeddingRecommender.score)


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


class MostPopular:
    """Non-parametric reference: every user gets the songs with the most training listeners."""

    def __init__(self, num_users: int, num_songs: int) -> None:
        self.num_users = num_users
        self.num_songs = num_songs
        self.popularity = torch.zeros(num_songs)

    def fit(self, train_edge_index: Tensor) -> MostPopular:
        self.popularity = torch.bincount(train_edge_index[1], minlength=self.num_songs).float()
        return self

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Rank-1 factors reproducing the popularity ranking through the shared dot-product scorer."""
        return torch.ones(self.num_users, 1), self.popularity.view(-1, 1)


MODEL_CLASSES = {
    "gat_basic": BasicGATRecommender,
    "gat_enhanced": GenreAwareGAT,
    "lightgcn": LightGCNRecommender,
}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
