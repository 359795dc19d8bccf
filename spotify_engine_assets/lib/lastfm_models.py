"""Graph recommenders on the Last.fm 2K ``HeteroData`` (user, artist, tag nodes; see
:func:`spotify_engine_assets.lib.lastfm.build_graph`).

Trainable models map the message-passing graph to one embedding per user and per artist
(``forward(graph) -> (user_emb, artist_emb)``); a pair scores as their dot product:

* :class:`LastfmLightGCN` - :class:`torch_geometric.nn.models.LightGCN` over the user--artist
  bipartite graph (training listens only).
* :class:`TagFriendGAT` - the heterogeneous GAT: user, artist and tag id embeddings, ``num_layers``
  attention layers over every relation (listens and their reverse with the log play count as
  edge weight, artist--tag both ways with the log assignment count, user--user friendships), a
  node summing the messages of all its relations with a learned weight per relation and layer,
  and a LightGCN-style mean over the layer outputs. ``conv="light"`` (default) is
  :class:`LightAttentionConv`, attention without feature transforms that starts from
  LightGCN-like normalisation; ``conv="gatv2"`` uses PyG's ``GATv2Conv`` with a residual.

And one closed-form graph model:

* :class:`GraphEASE` - EASE's item--item autoencoder solved on the graph's two item relations:
  the listens (users as rows) *and* the artist--tag edges (each tag a pseudo-user row of its
  artists, L2-normalised and weighted ``tag_weight``), so artists that share tags get tied even
  without common listeners; at scoring time each user's row is smoothed over the friendship
  relation, ``x_u + friend_weight * mean_{v ~ u} x_v``. Solved in the dual (Woodbury) form,
  one (users + tags) square system.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATv2Conv
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import scatter

from .lastfm import ARTIST, FRIEND, LISTENS, REV_LISTENS, REV_TAGGED, TAG, TAGGED, USER

UNSEEN_SCORE = -1e9


class LastfmLightGCN(nn.Module):
    def __init__(self, num_users: int, num_artists: int, embedding_dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.num_users, self.num_artists = num_users, num_artists
        self.lightgcn = LightGCN(num_users + num_artists, embedding_dim, num_layers)
        self._edges: tuple[int, Tensor] | None = None

    def _edge_index(self, graph: HeteroData) -> Tensor:
        listens = graph[LISTENS].edge_index
        if self._edges is None or self._edges[0] != id(listens):
            users, artists = listens[0], listens[1] + self.num_users
            self._edges = (id(listens), torch.cat([torch.stack([users, artists]), torch.stack([artists, users])], dim=1))
        return self._edges[1]

    def forward(self, graph: HeteroData) -> tuple[Tensor, Tensor]:
        out = self.lightgcn.get_embedding(self._edge_index(graph))
        return out[: self.num_users], out[self.num_users :]

    def ego_embeddings(self) -> Tensor:
        return self.lightgcn.embedding.weight


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

    def forward(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None):
        from torch_geometric.utils import softmax

        src, dst = edge_index
        hs = x_src.view(-1, self.heads, self.head_dim)
        hd = x_dst.view(-1, self.heads, self.head_dim)
        degree = torch.bincount(src, minlength=x_src.size(0)).clamp(min=1).float().log()
        logits = (hs * self.att_src).sum(-1)[src] + (hd * self.att_dst).sum(-1)[dst] + degree[src, None] * self.att_degree
        if self.att_weight is not None and edge_weight is not None:
            logits = logits + edge_weight[:, None] * self.att_weight
        alpha = softmax(nn.functional.leaky_relu(logits, 0.2), dst, num_nodes=x_dst.size(0))
        alpha = nn.functional.dropout(alpha, p=self.dropout, training=self.training)
        out = scatter(hs[src] * alpha[..., None], dst, dim=0, dim_size=x_dst.size(0), reduce="sum")
        return out.reshape(x_dst.size(0), -1), alpha


class TagFriendGAT(nn.Module):
    RELATIONS = (LISTENS, REV_LISTENS, TAGGED, REV_TAGGED, FRIEND)
    WEIGHTED = (LISTENS, REV_LISTENS, TAGGED, REV_TAGGED)

    def __init__(
        self,
        num_nodes: dict[str, int],
        embedding_dim: int = 64,
        num_layers: int = 2,
        heads: int = 2,
        dropout: float = 0.0,
        use_tags: bool = True,
        use_friends: bool = True,
        conv: str = "light",
        side_weight: float = 0.5,
    ) -> None:
        super().__init__()
        if conv not in ("light", "gatv2"):
            raise ValueError(f"conv must be light or gatv2, got {conv!r}")
        self.conv = conv
        if embedding_dim % heads:
            raise ValueError(f"embedding_dim {embedding_dim} must be divisible by heads {heads}")
        self.relations = [
            r for r in self.RELATIONS if (use_tags or TAG not in (r[0], r[2])) and (use_friends or r != FRIEND)
        ]
        node_types = {t for r in self.relations for t in (r[0], r[2])}
        self.embeddings = nn.ModuleDict({t: nn.Embedding(num_nodes[t], embedding_dim) for t in sorted(node_types)})
        for embedding in self.embeddings.values():
            nn.init.normal_(embedding.weight, std=0.1)
        # a learned weight per relation and layer; the side relations (tags, friends) start at side_weight
        self.relation_weights = nn.Parameter(
            torch.tensor([[1.0 if r in (LISTENS, REV_LISTENS) else side_weight for r in self.relations]] * num_layers)
        )
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "__".join(r): LightAttentionConv(embedding_dim, heads, r in self.WEIGHTED, dropout)
                    if conv == "light"
                    else GATv2Conv(
                        embedding_dim,
                        embedding_dim // heads,
                        heads=heads,
                        dropout=dropout,
                        add_self_loops=False,
                        edge_dim=1 if r in self.WEIGHTED else None,
                        bias=False,
                    )
                    for r in self.relations
                }
            )
            for _ in range(num_layers)
        )

    def forward(self, graph: HeteroData, return_attention: bool = False):
        x = {t: e.weight for t, e in self.embeddings.items()}
        outputs = {t: [v] for t, v in x.items()}
        attention = {}
        for depth, layer in enumerate(self.layers):
            new = {t: torch.zeros_like(v) for t, v in x.items()}
            for r, relation in enumerate(self.relations):
                store = graph[relation]
                weight = torch.log1p(store.edge_weight) if relation in self.WEIGHTED else None
                conv = layer["__".join(relation)]
                src, dst = relation[0], relation[2]
                if self.conv == "light":
                    result, alpha = conv(x[src], x[dst], store.edge_index, weight)
                    index = store.edge_index
                else:
                    result = conv(
                        (x[src], x[dst]),
                        store.edge_index,
                        edge_attr=None if weight is None else weight[:, None],
                        return_attention_weights=True,
                    )
                    result, (index, alpha) = result
                if return_attention:
                    attention[f"{depth}:{'__'.join(relation)}"] = (index, alpha)
                new[dst] = new[dst] + self.relation_weights[depth, r] * result
            # light: LightGCN-style propagation (the layer mean below combines depths); gatv2: residual
            x = new if self.conv == "light" else {t: new[t] + x[t] for t in x}
            for t, v in x.items():
                outputs[t].append(v)
        user = torch.stack(outputs[USER]).mean(0)
        artist = torch.stack(outputs[ARTIST]).mean(0)
        return (user, artist, attention) if return_attention else (user, artist)

    def ego_embeddings(self) -> Tensor:
        return torch.cat([self.embeddings[USER].weight, self.embeddings[ARTIST].weight])


class GraphEASE:
    def __init__(
        self,
        num_users: int,
        num_items: int,
        lam: float = 100.0,
        tag_weight: float = 0.0,
        friend_weight: float = 0.0,
        min_tag_artists: int = 2,
    ) -> None:
        self.num_users, self.num_items = num_users, num_items
        self.lam, self.tag_weight, self.friend_weight, self.min_tag_artists = lam, tag_weight, friend_weight, min_tag_artists

    def fit(self, graph: HeteroData) -> GraphEASE:
        import numpy as np
        import scipy.sparse as sp

        train = graph[LISTENS].edge_index
        self.items = torch.unique(train[1])
        position = torch.full((self.num_items,), -1, dtype=torch.long)
        position[self.items] = torch.arange(self.items.numel())
        n_items = self.items.numel()
        x = sp.csr_matrix(
            (np.ones(train.size(1)), (train[0].numpy(), position[train[1]].numpy())), shape=(self.num_users, n_items)
        )
        rows = [x]
        if self.tag_weight > 0:
            tagged = graph[TAGGED].edge_index
            keep = position[tagged[0]] >= 0
            artists, tags = position[tagged[0, keep]].numpy(), tagged[1, keep].numpy()
            weight = np.log1p(graph[TAGGED].edge_weight[keep].double().numpy())
            used, tag_row = np.unique(tags, return_inverse=True)
            t = sp.csr_matrix((weight, (tag_row, artists)), shape=(len(used), n_items))
            t = t[np.asarray((t > 0).sum(axis=1)).ravel() >= self.min_tag_artists]
            norms = np.sqrt(np.asarray(t.multiply(t).sum(axis=1)).ravel())
            rows.append(sp.diags(self.tag_weight / np.maximum(norms, 1e-12)) @ t)
        z = sp.vstack(rows).tocsr()  # (users + tags) x items, sparse
        k = torch.from_numpy((z @ z.T).toarray())
        k.diagonal().add_(self.lam)
        m = torch.cholesky_inverse(torch.linalg.cholesky(k)).numpy()  # (lambda I + Z Z^T)^-1
        mz = np.asarray((z.T @ m).T)  # M Z, dense (users + tags) x items
        diag_p = (1.0 - np.asarray(z.multiply(mz).sum(axis=0)).ravel()) / self.lam
        query = x.toarray()
        if self.friend_weight > 0:
            friends = graph[FRIEND].edge_index
            summed = scatter(torch.from_numpy(query)[friends[1]], friends[0], dim=0, dim_size=self.num_users, reduce="mean")
            query = query + self.friend_weight * summed.numpy()
        # query P = (query - query Z^T M Z) / lambda, computed as ((query Z^T) M) Z
        qzm = np.asarray((z @ query.T).T) @ m
        query_p = (query - np.asarray((z.T @ qzm.T).T)) / self.lam
        self.user_scores = torch.from_numpy(query - query_p / diag_p[None, :]).float()
        return self

    def scores(self, users: Tensor) -> Tensor:
        out = torch.full((users.numel(), self.num_items), UNSEEN_SCORE)
        out[:, self.items] = self.user_scores[users]
        return out
