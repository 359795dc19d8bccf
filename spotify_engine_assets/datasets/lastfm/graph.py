"""The Last.fm 2K graph, its fixed split with a validation cut, and the message-passing view.

The graph holds every user_artists.dat pair as a user -listens-> artist interaction (``play_count``
the listening count, ``split_part`` 0 for train.tsv, 1 for test.tsv, -1 for the pairs of the users
the split left out), ordered train.tsv pairs first (in file order), then test.tsv pairs, then the
rest; every user-tag-artist assignment as an artist -tagged-> tag
edge with the assigning ``user``; and user -friend- user (symmetric).

The fixed split (strategy ``fixed``): ``test`` is test.tsv; ``train`` and ``valid`` are the
validation cut of train.tsv made with the split's own recipe (seed 0: users in ascending index,
each user's artists sorted and permuted, the first ``max(1, round(0.2 n))`` held out, a user
keeping at least one). Tuned configs train on ``train`` and stop on ``valid``; their final fit
(``train_on_validation``) learns from both, i.e. all of train.tsv, as the data README's protocol
asks.

Leakage guard for side information (:func:`message_passing_view`): a user's tag assignment on an
artist reveals that the user knows the artist, so every assignment whose ``(user, artist)`` pair is
held out is dropped before the artist-tag edges are counted. Friendships carry no item information
and are kept whole.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ...core.data.graph import Schema, add_reverse
from ...core.dataset import split_violations as core_split_violations
from .data import LastfmData

USER, ARTIST, TAG = "user", "artist", "tag"
LISTENS = (USER, "listens", ARTIST)
TAGGED = (ARTIST, "tagged", TAG)
FRIEND = (USER, "friend", USER)
SCHEMA = Schema(interaction=LISTENS, categories={"tag": TAGGED}, social=FRIEND)


def validation_cut(train: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Positions into ``train`` (``[2, N]`` pairs) of the fit and validation parts, with the fixed
    split's own recipe (module docstring), each in (user, artist) order."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((train[1].numpy(), train[0].numpy()))
    users = train[0].numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    stops = np.r_[starts[1:], len(users)]
    held = np.zeros(len(users), dtype=bool)
    for start, stop in zip(starts, stops):
        n = stop - start
        if n < 2:
            continue
        take = min(max(1, round(fraction * n)), n - 1)
        held[start + rng.permutation(n)[:take]] = True
    order = torch.from_numpy(order.astype(np.int64))
    return order[torch.from_numpy(~held)], order[torch.from_numpy(held)]


def build_graph(data: LastfmData) -> HeteroData:
    """The whole graph (module docstring) of an indexed dataset."""
    num_artists = data.num_artists
    keys = data.listens[0] * num_artists + data.listens[1]
    split_keys = torch.cat([data.train, data.test], dim=1)
    rest = data.listens[:, ~torch.isin(keys, split_keys[0] * num_artists + split_keys[1])]
    pairs = torch.cat([data.train, data.test, rest], dim=1)
    order = torch.argsort(keys)
    wanted = pairs[0] * num_artists + pairs[1]
    position = torch.searchsorted(keys[order], wanted).clamp(max=keys.numel() - 1)
    if not bool((keys[order][position] == wanted).all()):
        raise ValueError("some split pairs are not listens of user_artists.dat")
    graph = HeteroData()
    for node_type, ids in ((USER, data.user_ids), (ARTIST, data.artist_ids), (TAG, data.tag_ids)):
        graph[node_type].num_nodes = len(ids)
        graph[node_type].node_id = torch.from_numpy(ids.astype(np.int64))
    graph[LISTENS].edge_index = pairs
    graph[LISTENS].play_count = data.listen_weight[order][position]
    part_sizes = torch.tensor([data.train.size(1), data.test.size(1), rest.size(1)])
    graph[LISTENS].split_part = torch.repeat_interleave(torch.tensor([0, 1, -1]), part_sizes)
    graph[TAGGED].edge_index = data.tag_assignments[1:]
    graph[TAGGED].user = data.tag_assignments[0]
    graph[FRIEND].edge_index = data.friends
    return graph


def fixed_split(graph: HeteroData, fraction: float = 0.2, seed: int = 0) -> dict:
    """The fixed split with its validation cut (module docstring): ``{"settings", "fixed": {...}}``."""
    part = graph[LISTENS].split_part
    train_index, test_index = torch.nonzero(part == 0).flatten(), torch.nonzero(part == 1).flatten()
    fit, valid = validation_cut(graph[LISTENS].edge_index[:, train_index], fraction, seed)
    split = {"train": train_index[fit], "valid": train_index[valid], "test": test_index}
    return {"settings": {"valid_fraction": fraction, "seed": seed}, "fixed": split}


def graph_and_split(data: LastfmData, fraction: float = 0.2, seed: int = 0) -> tuple[HeteroData, dict]:
    """:func:`build_graph` and :func:`fixed_split` of an indexed dataset."""
    graph = build_graph(data)
    return graph, fixed_split(graph, fraction, seed)


def message_passing_view(graph: HeteroData, train_index: Tensor, heldout_index: Tensor) -> HeteroData:
    """The graph a model sees: the training listens (``edge_weight`` = log1p of the play count) and
    their reverse, artist -tagged-> tag counted from the assignments whose (user, artist) pair is not
    held out (``edge_weight`` = assignments), and the friendships; reverse relations."""
    view = HeteroData()
    for node_type in (USER, ARTIST, TAG):
        view[node_type].num_nodes = graph[node_type].num_nodes
        view[node_type].node_id = graph[node_type].node_id
    listens = graph[LISTENS]
    view[LISTENS].edge_index = listens.edge_index[:, train_index]
    view[LISTENS].edge_weight = torch.log1p(listens.play_count[train_index])
    num_artists, num_tags = int(graph[ARTIST].num_nodes), int(graph[TAG].num_nodes)
    held = listens.edge_index[:, heldout_index]
    artists, tags = graph[TAGGED].edge_index
    keep = ~torch.isin(graph[TAGGED].user * num_artists + artists, held[0] * num_artists + held[1])
    keys, counts = torch.unique(artists[keep] * num_tags + tags[keep], return_counts=True)
    view[TAGGED].edge_index = torch.stack([keys // num_tags, keys % num_tags])
    view[TAGGED].edge_weight = counts.float()
    view[FRIEND].edge_index = graph[FRIEND].edge_index.clone()
    return add_reverse(view, (LISTENS, TAGGED), attributes=("edge_weight",))


def split_violations(graph: HeteroData, splits: dict) -> dict[str, int]:
    """Counts that must be zero: a pair in two parts, an index out of range, and a held-out pair in
    the view of the training part (the left-out users' pairs are in no part: not a violation)."""
    return core_split_violations(graph, splits, SCHEMA, message_passing_view, cover=False)
