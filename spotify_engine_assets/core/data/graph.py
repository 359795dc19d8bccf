"""What every chain's graph has in common: a :class:`Schema` that names its relations, and helpers
on PyTorch Geometric ``HeteroData`` that only need that schema.

A chain's graph is a ``HeteroData`` with one *interaction* relation ``(user type, rel, item type)``
(user-listens->song, playlist-contains->track, user-listens->artist), optional *category*
relations from the item to side nodes (song-by->artist, song-has->genre, artist-tagged->tag),
optional *context* relations among side nodes (artist-has->genre) and an optional *social*
relation among users (user-friend->user). Models, training, evaluation and serving take relation
names from the schema, never from a dataset module, so the same code runs on every chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

EdgeType = tuple[str, str, str]


def reverse(edge_type: EdgeType) -> EdgeType:
    """The reverse relation's name: ``(a, r, b)`` -> ``(b, rev_r, a)``."""
    src, rel, dst = edge_type
    return (dst, f"rev_{rel}", src)


def relation_key(edge_type: EdgeType) -> str:
    return "__".join(edge_type)


@dataclass(frozen=True)
class Schema:
    """The relations of a chain's graph (module docstring).

    Args:
        interaction: ``(user type, relation, item type)``; its reverse is :func:`reverse` of it.
        categories: Role -> item-to-side relation, in the order models use them (the first is the
            item's main category: the artist of a song or track, the tag of an artist).
        context: Relations among side nodes (both ends must have nodes to be used).
        social: A user-user relation, if any.
        interaction_attr_dim: Columns of the interaction's ``edge_attr`` that attention may read
            (0: none).
    """

    interaction: EdgeType
    categories: dict[str, EdgeType] = field(default_factory=dict)
    context: tuple[EdgeType, ...] = ()
    social: EdgeType | None = None
    interaction_attr_dim: int = 0

    @property
    def user(self) -> str:
        return self.interaction[0]

    @property
    def item(self) -> str:
        return self.interaction[2]

    @property
    def reverse_interaction(self) -> EdgeType:
        return reverse(self.interaction)

    def category(self, role: str) -> EdgeType | None:
        return self.categories.get(role)

    def node_types(self, num_nodes: dict[str, int] | None = None) -> tuple[str, ...]:
        """User and item types, then every side type in relation order (each once); with
        ``num_nodes``, context types without nodes are left out."""
        types = [self.user, self.item]
        for edge_type in (*self.categories.values(), *self.usable_context(num_nodes)):
            types += [t for t in (edge_type[0], edge_type[2]) if t not in types]
        return tuple(types)

    def usable_context(self, num_nodes: dict[str, int] | None = None) -> tuple[EdgeType, ...]:
        if num_nodes is None:
            return self.context
        return tuple(r for r in self.context if num_nodes.get(r[0], 0) and num_nodes.get(r[2], 0))


def num_nodes_of(data: HeteroData) -> dict[str, int]:
    return {t: int(data[t].num_nodes) for t in data.node_types}


def positions_in(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's position in the sorted ``ids`` (node index of an original id), and the mask of
    values that are not in ``ids`` (the caller names them in its error)."""
    position = np.clip(np.searchsorted(ids, values), 0, len(ids) - 1)
    return position, ids[position] != values


def pair_keys(users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """One int64 key per (user, item) pair."""
    return users.long() * num_items + items.long()


def interaction_matrix(pairs: Tensor, num_users: int, num_items: int, values: Tensor | None = None):
    """A float32 ``scipy.sparse.csr_matrix`` of (user, item) pairs (1.0, or ``values``)."""
    import scipy.sparse as sp

    data = np.ones(pairs.size(1), dtype=np.float32) if values is None else values.numpy().astype(np.float32)
    matrix = sp.csr_matrix((data, (pairs[0].numpy(), pairs[1].numpy())), shape=(num_users, num_items))
    matrix.sum_duplicates()
    return matrix


def add_reverse(data: HeteroData, edge_types, attributes: tuple[str, ...] = ("edge_attr", "edge_weight")) -> HeteroData:
    """Add the reverse of each relation (sharing the listed edge attributes)."""
    for edge_type in edge_types:
        store, back = data[edge_type], data[reverse(edge_type)]
        back.edge_index = store.edge_index.flip(0)
        for name in attributes:
            if name in store:
                back[name] = store[name]
    return data


def heldout_in_view(view: HeteroData, data: HeteroData, schema: Schema, heldout_index: Tensor) -> int:
    """How many held-out interaction pairs (indices into ``data``'s interaction edges) appear in
    either direction of the view's interaction relation: 0 for a leak-free view."""
    num_items = int(data[schema.item].num_nodes)
    held = data[schema.interaction].edge_index[:, heldout_index]
    forward = view[schema.interaction].edge_index
    backward = view[schema.reverse_interaction].edge_index
    seen = torch.cat([pair_keys(forward[0], forward[1], num_items), pair_keys(backward[1], backward[0], num_items)])
    return int(torch.isin(pair_keys(held[0], held[1], num_items), seen).sum())


def graph_summary(data: HeteroData) -> dict[str, int]:
    """Node and edge counts per type, keyed for Dagster metadata."""
    summary = {f"nodes/{t}": int(data[t].num_nodes) for t in data.node_types}
    summary.update({f"edges/{relation_key(t)}": int(data[t].edge_index.size(1)) for t in data.edge_types})
    return summary


def to_payload(data: HeteroData) -> dict:
    """A ``weights_only``-loadable representation (plain dicts of tensors)."""
    return data.to_dict()


def from_payload(payload: dict) -> HeteroData:
    return HeteroData.from_dict(payload)


def category_features(data: HeteroData, schema: Schema, role: str) -> Tensor | None:
    """Multi-hot ``[num_items, num_categories]`` vectors of one category role (None: the schema or
    the graph has no such relation)."""
    edge_type = schema.category(role)
    if edge_type is None or edge_type not in data.edge_types:
        return None
    edges = data[edge_type].edge_index
    features = torch.zeros(int(data[schema.item].num_nodes), max(int(data[edge_type[2]].num_nodes), 1))
    features[edges[0], edges[1]] = 1.0
    return features


def training_view(
    data: HeteroData, schema: Schema, train_index: Tensor, heldout_index: Tensor | None = None
) -> HeteroData:
    """The default message-passing view: every node, the *training* interactions (with their
    ``edge_attr`` / ``edge_weight``), every category, context and social relation whole, and the
    reverse of the interaction, category and context relations. Nothing of a held-out interaction
    is visible; nothing else depends on ``heldout_index``."""
    view = HeteroData()
    for node_type in data.node_types:
        view[node_type].num_nodes = data[node_type].num_nodes
        if "node_id" in data[node_type]:
            view[node_type].node_id = data[node_type].node_id
    kept = {schema.interaction: train_index}
    for edge_type in (
        schema.interaction,
        *schema.categories.values(),
        *schema.context,
        *([schema.social] if schema.social else []),
    ):
        if edge_type not in data.edge_types:
            continue
        store, index = data[edge_type], kept.get(edge_type)
        view[edge_type].edge_index = store.edge_index if index is None else store.edge_index[:, index]
        for name in ("edge_attr", "edge_weight"):
            if name in store:
                view[edge_type][name] = store[name] if index is None else store[name][index]
    forward = [r for r in (schema.interaction, *schema.categories.values(), *schema.context) if r in view.edge_types]
    return add_reverse(view, forward)
