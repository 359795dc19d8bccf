"""Last.fm 2K robustness splits (datasets/lastfm/splits.py): seeded per-user 80/20 splits with a
validation cut of training only, and the long-tail catalogue. Toy-graph tests always run; the
real-data ones skip when ../shared/data is absent."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.datasets.lastfm import DATASET, splits
from spotify_engine_assets.datasets.lastfm import data as lastfm
from spotify_engine_assets.datasets.lastfm import graph as lastfm_graph

needs_data = pytest.mark.skipif(
    not lastfm.available(),
    reason=f"Last.fm 2K data absent ({lastfm.data_dir()}, {lastfm.split_dir()}): ../shared/data is not on this machine",
)

LISTENS, TAGGED = lastfm_graph.LISTENS, lastfm_graph.TAGGED


def toy_graph(num_users: int = 30, num_artists: int = 40, seed: int = 0) -> HeteroData:
    """Users with 2..20 artists each, tag assignments on listened artists, a few friendships."""
    generator = torch.Generator().manual_seed(seed)
    users, artists = [], []
    for user in range(num_users):
        n = 2 + user % 19
        chosen = torch.randperm(num_artists, generator=generator)[:n]
        users += [user] * n
        artists += chosen.tolist()
    listens = torch.tensor([users, artists])
    graph = HeteroData()
    for node_type, count in (("user", num_users), ("artist", num_artists), ("tag", 7)):
        graph[node_type].num_nodes = count
        graph[node_type].node_id = torch.arange(count) + 100
    graph[LISTENS].edge_index = listens
    graph[LISTENS].play_count = torch.randint(1, 50, (listens.size(1),), generator=generator).float()
    graph[LISTENS].split_part = torch.full((listens.size(1),), -1)
    tagged = torch.randperm(listens.size(1), generator=generator)[:60]
    graph[TAGGED].edge_index = torch.stack([listens[1, tagged], torch.randint(0, 7, (60,), generator=generator)])
    graph[TAGGED].user = listens[0, tagged]
    graph[lastfm_graph.FRIEND].edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    return graph


def pair_set(graph: HeteroData, index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, graph[LISTENS].edge_index[:, index].T.tolist()))


def check_leakage_free(graph: HeteroData, split: dict) -> None:
    """Disjoint parts, no held-out pair in the training view, validation cut from training only
    (every user with a test pair keeps training pairs; test is exactly the outer holdout)."""
    assert sum(DATASET.split_violations(graph, split).values()) == 0
    parts = split["random"]
    train, valid, test = (pair_set(graph, parts[p]) for p in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    config = DATASET.registry.base["ease"]  # train_on_validation: learns from train + valid
    view = DATASET.view_for(graph, parts, config)
    seen = set(map(tuple, view[LISTENS].edge_index.T.tolist()))
    assert not (seen & test) and seen == train | valid
    plain = DATASET.view(graph, parts["train"], torch.cat([parts["valid"], parts["test"]]))
    assert set(map(tuple, plain[LISTENS].edge_index.T.tolist())) == train


def test_random_split_recipe_on_toy_graph():
    graph = toy_graph()
    split = splits.random_split(graph, seed=3)
    check_leakage_free(graph, split)
    parts = split["random"]
    users = graph[LISTENS].edge_index[0]
    counts = torch.bincount(users)
    for user in range(graph["user"].num_nodes):
        n = int(counts[user])
        held = int((users[parts["test"]] == user).sum())
        fit, val = int((users[parts["train"]] == user).sum()), int((users[parts["valid"]] == user).sum())
        if n < splits.MIN_ARTISTS:  # left out of every part
            assert held == fit == val == 0
            continue
        assert held == max(1, round(0.2 * n))
        assert val == min(max(1, round(0.2 * (n - held))), n - held - 1) and fit >= 1
    # seeded: the same seed gives the same split, another seed another one
    again = splits.random_split(graph, seed=3)["random"]
    assert all(torch.equal(parts[p], again[p]) for p in parts)
    assert not torch.equal(parts["test"], splits.random_split(graph, seed=4)["random"]["test"])


def test_drop_artists_renumbers_and_removes_everything_of_the_head():
    graph = toy_graph()
    head = splits.head_artists(graph, 0.1)
    listeners = torch.bincount(graph[LISTENS].edge_index[1], minlength=40)
    assert head.numel() == 4 and listeners[head].min() >= listeners[~torch.isin(torch.arange(40), head)].max()
    tail = splits.drop_artists(graph, head)
    kept_ids = graph["artist"].node_id[~torch.isin(torch.arange(40), head)]
    assert tail["artist"].num_nodes == 36 and torch.equal(tail["artist"].node_id, kept_ids)
    original = {(u, int(graph["artist"].node_id[a])) for u, a in graph[LISTENS].edge_index.T.tolist()}
    remaining = {(u, int(tail["artist"].node_id[a])) for u, a in tail[LISTENS].edge_index.T.tolist()}
    head_ids = set(graph["artist"].node_id[head].tolist())
    assert remaining == {(u, a) for u, a in original if a not in head_ids}
    assert tail[LISTENS].play_count.numel() == tail[LISTENS].edge_index.size(1)
    assert not set(tail["artist"].node_id[tail[TAGGED].edge_index[0]].tolist()) & head_ids
    assert tail[TAGGED].user.numel() == tail[TAGGED].edge_index.size(1)
    check_leakage_free(tail, splits.random_split(tail, seed=1))


# ------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_graph():
    return lastfm_graph.build_graph(lastfm.load_dataset())


@needs_data
def test_seed_zero_reproduces_the_fixed_split(real_graph):
    fixed = lastfm_graph.fixed_split(real_graph)["fixed"]
    random = splits.random_split(real_graph, seed=0)["random"]
    assert pair_set(real_graph, random["test"]) == pair_set(real_graph, fixed["test"])
    assert pair_set(real_graph, random["valid"]) == pair_set(real_graph, fixed["valid"])
    assert pair_set(real_graph, random["train"]) == pair_set(real_graph, fixed["train"])


@needs_data
@pytest.mark.parametrize("seed", [1, 5])
def test_real_random_splits_are_leakage_free(real_graph, seed):
    split = splits.random_split(real_graph, seed)
    check_leakage_free(real_graph, split)
    parts = split["random"]
    assert parts["test"].numel() == 18562  # the recipe fixes each user's count, not which artists
    assert torch.unique(real_graph[LISTENS].edge_index[0, parts["test"]]).numel() == 1877
    fixed_test = pair_set(real_graph, lastfm_graph.fixed_split(real_graph)["fixed"]["test"])
    assert pair_set(real_graph, parts["test"]) != fixed_test


@needs_data
def test_real_long_tail_variant(real_graph):
    tail, head = splits.long_tail_graph(real_graph)
    assert head.numel() == 177 and tail["artist"].num_nodes == 17632 - 177
    listeners = torch.bincount(real_graph[LISTENS].edge_index[1], minlength=17632)
    assert int(listeners[head].min()) >= 81
    dropped = int(torch.isin(real_graph[LISTENS].edge_index[1], head).sum())
    assert tail[LISTENS].edge_index.size(1) == 92834 - dropped
    assert 0.30 < dropped / 92834 < 0.33
    check_leakage_free(tail, splits.random_split(tail, seed=0))
