"""Sampled neighbourhoods (core/training/neighbors.py): LightGCN embeddings of a batch's nodes
from a few drawn neighbours per hop.

With fanouts covering every degree the sampled forward is the full forward; with small fanouts it
is an unbiased estimate (the error of a mean over many draws shrinks like ``1 / sqrt(draws)``,
while an estimate without the ``degree / fanout`` weights does not); gradients reach only the
sampled nodes' id embeddings (as a sparse gradient on request); the node sets and edges of a step are bounded by
``batch * prod(fanouts)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import parse_config
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.neighbors import (
    lightgcn_csr,
    sample_blocks,
    sampled_bpr_embeddings,
    sampled_lightgcn,
)
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA

torch.set_num_threads(1)
NUM_NODES = {"user": 40, "song": 60, "artist": 1, "genre": 1}


def random_view(listens: int = 500, seed: int = 0) -> HeteroData:
    """Distinct random listens, song popularity skewed (a few songs of high degree)."""
    g = torch.Generator().manual_seed(seed)
    users, songs = NUM_NODES["user"], NUM_NODES["song"]
    popularity = (torch.arange(songs, dtype=torch.float) + 1).pow(-0.8).repeat(users)  # per (user, song) cell
    cells = torch.multinomial(popularity, listens, replacement=False, generator=g)
    data = HeteroData()
    for node_type, count in NUM_NODES.items():
        data[node_type].num_nodes = count
    data[LISTENS].edge_index = torch.stack([cells // songs, cells % songs])
    return data


def lightgcn(layers: int = 3, normalize: bool = False, seed: int = 0):
    config = parse_config(
        {"name": "lgcn", "model": "lightgcn", "embedding_dim": 8, "num_layers": layers, "normalize": normalize}
    )
    torch.manual_seed(seed)
    return build_model(config, SCHEMA, NUM_NODES)


def full_forward(model, view) -> torch.Tensor:
    return torch.cat(model(view))


def degrees(model, view) -> torch.Tensor:
    rowptr = lightgcn_csr(model, view)[0]
    return rowptr[1:] - rowptr[:-1]


@pytest.mark.parametrize("fanout", [-1, "max"])
def test_fanouts_covering_every_degree_give_the_full_forward_and_gradient(fanout):
    view, model = random_view(), lightgcn()
    fanout = int(degrees(model, view).max()) if fanout == "max" else fanout
    nodes = torch.tensor([0, 5, 5, 41, 99, 70, 3, 41])
    weight = torch.randn(nodes.numel(), 8)
    sampled = sampled_lightgcn(model, view, nodes, [fanout] * 3, torch.Generator().manual_seed(1))
    full = full_forward(model, view)
    assert torch.allclose(sampled, full[nodes], atol=1e-6)
    (sampled_grad,) = torch.autograd.grad((sampled * weight).sum(), model.model.embedding.weight)
    (full_grad,) = torch.autograd.grad((full[nodes] * weight).sum(), model.model.embedding.weight)
    assert torch.allclose(sampled_grad, full_grad, atol=1e-6)


def test_isolated_nodes_and_empty_batches():
    view, model = random_view(), lightgcn()
    edges = view[LISTENS].edge_index
    view[LISTENS].edge_index = edges[:, edges[0] != 0]  # user 0 listens to nothing
    full = full_forward(model, view)
    for nodes in (torch.tensor([0, 0]), torch.tensor([0, 45]), torch.tensor([], dtype=torch.long)):
        sampled = sampled_lightgcn(model, view, nodes, [2, 2, 2], torch.Generator())
        assert sampled.shape == (nodes.numel(), 8)
        if nodes.numel() and nodes[-1] == 0:
            assert torch.allclose(sampled, full[nodes])  # alpha_0 h0: no neighbour to draw


def test_bpr_embeddings_are_the_encoded_rows_in_the_steps_shapes():
    view, model = random_view(), lightgcn(layers=2, normalize=True)
    users, positives = torch.tensor([0, 1, 1, 7]), torch.tensor([2, 2, 30, 59])
    negatives = torch.tensor([[5, 6, 7], [2, 9, 9], [0, 1, 2], [58, 57, 3]])
    user_emb, pos_emb, neg_emb = sampled_bpr_embeddings(
        model, view, users, positives, negatives, [-1, -1], torch.Generator()
    )
    assert user_emb.shape == (4, 8) and pos_emb.shape == (4, 8) and neg_emb.shape == (4, 3, 8)
    full_user, full_item = model.encode(view)
    assert torch.allclose(user_emb, full_user[users], atol=1e-6)
    assert torch.allclose(pos_emb, full_item[positives], atol=1e-6)
    assert torch.allclose(neg_emb, full_item[negatives], atol=1e-6)


def horner(model, view, blocks, fanouts, scaled: bool = True) -> torch.Tensor:
    """The sampled forward over given blocks; ``scaled=False`` drops the ``degree / fanout``
    factor of drawn rows (a biased estimate, the negative control)."""
    weight, alpha = model.model.embedding.weight, model.model.alpha
    degree = degrees(model, view)
    z = weight[blocks[-1].sources] * alpha[-1]
    for hop in range(len(blocks) - 1, -1, -1):
        block = blocks[hop]
        values = block.weight
        if not scaled:
            target_degree = degree[block.targets][block.edge_index[1]].float()
            values = torch.where(target_degree > fanouts[hop], values * fanouts[hop] / target_degree, values)
        z = weight[block.targets] * alpha[hop] + block.adjacency.spmm(values, z)
    return z


@torch.no_grad()
def test_small_fanouts_are_unbiased():
    view, model = random_view(), lightgcn()
    fanouts = [2, 2, 2]
    assert (degrees(model, view) > 2).float().mean() > 0.8  # most rows are drawn, not kept whole
    nodes = torch.arange(0, 100, 3)
    full = full_forward(model, view)[nodes]
    rowptr, col, norm = lightgcn_csr(model, view)
    generator, draws = torch.Generator().manual_seed(0), 400
    samples, controls = [], []
    for _ in range(draws):
        blocks = sample_blocks(rowptr, col, norm, nodes, fanouts, generator)
        samples.append(horner(model, view, blocks, fanouts))
        controls.append(horner(model, view, blocks, fanouts, scaled=False))
    samples, controls = torch.stack(samples), torch.stack(controls)
    # the same draws through sampled_lightgcn: the module's forward is the estimate tested here
    again = sampled_lightgcn(model, view, nodes, fanouts, torch.Generator().manual_seed(0))
    assert torch.allclose(again, samples[0], atol=1e-6)

    rms_single = (samples - full).pow(2).sum((1, 2)).mean().sqrt()
    error_of_mean = (samples.mean(0) - full).norm()
    assert rms_single > 0.2 * full.norm()  # one draw is far off: the test is not trivially exact
    # unbiased: E||mean - full||^2 = E||single - full||^2 / draws (independent draws); measured
    # about 1.05 times rms_single / sqrt(draws), the bound allows 2
    bound = 2.0 * rms_single / math.sqrt(draws)
    assert error_of_mean < bound
    # the estimate without the degree / fanout weights is biased: its mean stays about 9
    # rms_single / sqrt(draws) away, so a bound this loose still tells the two apart
    assert (controls.mean(0) - full).norm() > 3 * bound


def test_gradients_reach_only_the_sampled_nodes():
    view, model = random_view(), lightgcn(layers=2)
    rowptr, col, norm = lightgcn_csr(model, view)
    nodes, fanouts = torch.tensor([3, 50, 50, 77]), [2, 2]
    blocks = sample_blocks(rowptr, col, norm, nodes, fanouts, torch.Generator().manual_seed(5))
    out = sampled_lightgcn(model, view, nodes, fanouts, torch.Generator().manual_seed(5))
    (out * torch.randn_like(out)).sum().backward()
    touched = model.model.embedding.weight.grad.abs().sum(1) > 0
    sampled = torch.zeros_like(touched)
    for block in blocks:
        sampled[block.targets] = True
        sampled[block.sources] = True
    assert torch.equal(torch.unique(nodes), blocks[0].targets)
    assert not (touched & ~sampled).any()  # nothing outside the neighbourhood
    assert touched[nodes].all()  # the seeds themselves (alpha_0 > 0)
    assert sampled.sum() < 0.5 * sampled.numel()  # the neighbourhood is a small part of the graph

    # the same draws with a sparse gradient (for SparseAdam): the same numbers, sampled rows only
    assert not model.model.embedding.weight.grad.is_sparse
    model.model.embedding.weight.grad = None
    out = sampled_lightgcn(model, view, nodes, fanouts, torch.Generator().manual_seed(5), sparse_grad=True)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    sparse_grad = model.model.embedding.weight.grad
    assert sparse_grad.is_sparse and sparse_grad.coalesce().indices().size(1) == int(sampled.sum())
    model.model.embedding.weight.grad = None
    out = sampled_lightgcn(model, view, nodes, fanouts, torch.Generator().manual_seed(5))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.allclose(sparse_grad.to_dense(), model.model.embedding.weight.grad, atol=1e-7)


def test_node_sets_and_edges_are_bounded_by_batch_times_fanouts():
    view, model = random_view(), lightgcn()
    rowptr, col, norm = lightgcn_csr(model, view)
    degree = rowptr[1:] - rowptr[:-1]
    pairs = set(zip(view[LISTENS].edge_index[0].tolist(), (view[LISTENS].edge_index[1] + 40).tolist()))
    seeds, fanouts = torch.tensor([0, 1, 2, 2, 45, 80]), [3, 2, 2]
    blocks = sample_blocks(rowptr, col, norm, seeds, fanouts, torch.Generator().manual_seed(2))
    bound = torch.unique(seeds).numel()
    assert blocks[0].targets.numel() == bound == 5
    for hop, (block, fanout) in enumerate(zip(blocks, fanouts)):
        if hop:
            assert torch.equal(block.targets, blocks[hop - 1].sources)
        per_target = torch.bincount(block.edge_index[1], minlength=block.targets.numel())
        assert torch.equal(per_target, degree[block.targets].clamp(max=fanout))  # min(degree, fanout) edges each
        bound *= fanout
        assert block.num_edges <= block.targets.numel() * fanout and block.sources.numel() <= bound
        assert torch.equal(torch.unique(block.sources), block.sources)  # deduplicated
        ends = zip(block.targets[block.edge_index[1]].tolist(), block.sources[block.edge_index[0]].tolist())
        assert all((min(a, b), max(a, b)) in pairs for a, b in ends)  # every sampled edge is a graph edge
    assert blocks[1].sources.numel() < 5 * 3 * 2  # deduplication happened on this small graph


def test_bad_arguments_raise():
    view, model = random_view(), lightgcn()
    nodes = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="one fanout per layer: the model has 3 layers"):
        sampled_lightgcn(model, view, nodes, [5, 5], torch.Generator())
    with pytest.raises(ValueError, match="fanouts must be positive"):
        sampled_lightgcn(model, view, nodes, [5, 0, 5], torch.Generator())
    with pytest.raises(ValueError, match="seed ids must lie in"):
        sampled_lightgcn(model, view, torch.tensor([100]), [5, 5, 5], torch.Generator())
    with pytest.raises(TypeError, match="LightGCN only"):
        sampled_lightgcn(object(), view, nodes, [5, 5, 5], torch.Generator())
