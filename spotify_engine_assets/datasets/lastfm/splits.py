"""More Last.fm 2K splits than the fixed one, for robustness studies (``benchmarks/bench_quality.py``).

* :func:`random_split`: a seeded per-user 80/20 split of every user-artist pair, with the data
  README's recipe for the fixed split (every pair a positive; users with at least 5 artists kept;
  users in ascending id with one ``numpy.random.default_rng(seed)``; each user's artists sorted by
  id and permuted; the first ``max(1, round(0.2 n))`` are test). Seed 0 gives exactly test.tsv.
  Validation is cut from the training part only (:func:`~.graph.validation_cut`, the same recipe,
  seeded with the split's seed), never from test.
* :func:`long_tail_graph`: the graph without the head of the catalogue, the top 1 % of artists by
  listeners (the ``ceil(0.01 * 17,632) = 177`` artists with the most distinct users in
  user_artists.dat, ties to the lower artist index: at least 81 listeners each, 31.6 % of all
  pairs). Their listens and tag assignments leave the graph and the artists leave the catalogue
  (artist indices renumbered), so every model ranks the remaining 17,455 artists only. Then a
  :func:`random_split` of what is left (users left with fewer than 5 artists drop out of the
  split). Popularity is counted over all pairs before any split: it defines the catalogue (like a
  k-core filter), it is not a model input, and every model sees the same catalogue.

A split is ``{"settings": {...}, "random": {"train", "valid", "test"}}``, index tensors into the
graph's listens (the pairs of left-out users are in no part), as :func:`~.graph.fixed_split`
returns for ``fixed``; ``DATASET.fit(config, graph, split["random"])`` trains on it and
``DATASET.split_violations(graph, split)`` checks it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .graph import ARTIST, FRIEND, LISTENS, TAG, TAGGED, USER, validation_cut

MIN_ARTISTS = 5  # the data README's rule: users with fewer artists are left out of the split
HEAD_FRACTION = 0.01  # long-tail variant: share of the artists (by listeners) dropped from the catalogue


def random_split(
    graph: HeteroData,
    seed: int,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    min_artists: int = MIN_ARTISTS,
) -> dict:
    """A seeded per-user random split of every listens pair (module docstring): ``test`` the
    README recipe's held-out part, ``train`` and ``valid`` the validation cut of the rest."""
    pairs = graph[LISTENS].edge_index
    counts = torch.bincount(pairs[0], minlength=int(graph[USER].num_nodes))
    kept = torch.nonzero(counts[pairs[0]] >= min_artists).flatten()
    # users with >= 5 artists: validation_cut holds out max(1, round(f n)) <= n - 1 of each, users
    # in ascending index, artists sorted then permuted, one generator: the README's recipe exactly
    rest, test = validation_cut(pairs[:, kept], test_fraction, seed)
    rest, test = kept[rest], kept[test]
    fit, valid = validation_cut(pairs[:, rest], valid_fraction, seed)
    settings = {
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "min_artists": min_artists,
    }
    return {"settings": settings, "random": {"train": rest[fit], "valid": rest[valid], "test": test}}


def head_artists(graph: HeteroData, fraction: float = HEAD_FRACTION) -> Tensor:
    """The ``ceil(fraction * artists with a listener)`` artists with the most distinct listeners
    (ties to the lower index), sorted."""
    listeners = torch.bincount(graph[LISTENS].edge_index[1], minlength=int(graph[ARTIST].num_nodes))
    count = math.ceil(fraction * int((listeners > 0).sum()))
    order = torch.sort(-listeners, stable=True).indices
    return torch.sort(order[:count]).values


def drop_artists(graph: HeteroData, artists: Tensor) -> HeteroData:
    """``graph`` without ``artists``: their listens and tag assignments removed, the other
    artists renumbered in order (``node_id`` keeps their original ids); users, tags and
    friendships unchanged."""
    num_artists = int(graph[ARTIST].num_nodes)
    keep = torch.ones(num_artists, dtype=torch.bool)
    keep[artists] = False
    new_index = torch.cumsum(keep.long(), 0) - 1
    out = HeteroData()
    for node_type in (USER, TAG):
        out[node_type].num_nodes = graph[node_type].num_nodes
        out[node_type].node_id = graph[node_type].node_id
    out[ARTIST].num_nodes = int(keep.sum())
    out[ARTIST].node_id = graph[ARTIST].node_id[keep]
    for edge_type, column in ((LISTENS, 1), (TAGGED, 0)):
        store = graph[edge_type]
        edges = keep[store.edge_index[column]]
        for key, value in store.items():
            out[edge_type][key] = value[..., edges]
        out[edge_type].edge_index[column] = new_index[out[edge_type].edge_index[column]]
    out[FRIEND].edge_index = graph[FRIEND].edge_index.clone()
    return out


def long_tail_graph(graph: HeteroData, fraction: float = HEAD_FRACTION) -> tuple[HeteroData, Tensor]:
    """The graph without its head artists (module docstring) and those artists' indices in ``graph``."""
    head = head_artists(graph, fraction)
    return drop_artists(graph, head), head
