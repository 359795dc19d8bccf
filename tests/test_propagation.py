"""Sparse aggregation (core/models/propagation.py) computes what per-edge message passing computed.

LightGCN and the enhanced GAT aggregate with one CSR sparse-dense product per relation instead of
materializing ``[E, d]`` messages. These tests compare them, forward and backward, with the
message-passing forms they replaced: PyG's ``LightGCN.get_embedding`` and the enhanced GAT's layer
computed through its ``GATConv``s' own ``propagate`` (with PyG's explain hooks for edge masks).
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.explain.algorithm.utils import clear_masks, set_hetero_masks

from spotify_engine_assets.core.config import parse_config
from spotify_engine_assets.core.data.graph import relation_key
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.models.gat import LightAttentionConv, layer_mean, standardized
from spotify_engine_assets.core.models.propagation import Adjacency, AdjacencyCache
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, SCHEMA, add_reverse_edges

torch.set_num_threads(1)
NUM_NODES = {"user": 30, "song": 40, "artist": 8, "genre": 5}


def random_graph(seed: int = 0, listens: int = 220) -> HeteroData:
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(NUM_NODES["user"] * NUM_NODES["song"], generator=g)[:listens]
    data = HeteroData()
    for node_type, count in NUM_NODES.items():
        data[node_type].num_nodes = count
        data[node_type].node_id = torch.arange(count)
    data[LISTENS].edge_index = torch.stack([pairs // NUM_NODES["song"], pairs % NUM_NODES["song"]])
    data[LISTENS].edge_attr = torch.rand(listens, 3, generator=g)
    songs = torch.arange(NUM_NODES["song"])
    data[BY].edge_index = torch.stack([songs, torch.randint(NUM_NODES["artist"], (NUM_NODES["song"],), generator=g)])
    genre_songs = torch.cat([songs, songs[::3]])
    data[HAS].edge_index = torch.stack([genre_songs, torch.randint(NUM_NODES["genre"], genre_songs.shape, generator=g)])
    return add_reverse_edges(data)


def test_spmm_matches_dense_product_and_gradients():
    g = torch.Generator().manual_seed(1)
    edge_index = torch.stack([torch.randint(7, (40,), generator=g), torch.randint(5, (40,), generator=g)])
    edge_index = torch.cat([edge_index, edge_index[:, :3]], 1)  # duplicate edges add up
    values = torch.rand(43, dtype=torch.double, generator=g, requires_grad=True)
    x = torch.rand(7, 4, dtype=torch.double, generator=g, requires_grad=True)
    adjacency = Adjacency(edge_index, num_src=7, num_dst=5)
    dense = torch.zeros(5, 7, dtype=torch.double).index_put((edge_index[1], edge_index[0]), values, accumulate=True)
    assert torch.allclose(adjacency.spmm(values, x), dense @ x)
    assert torch.allclose(adjacency.matrix(values).to_dense(), dense)
    assert torch.autograd.gradcheck(adjacency.spmm, (values, x))
    with pytest.raises(ValueError, match="one value per edge"):
        adjacency.spmm(values[:-1], x)


def test_cache_rebuilds_for_another_tensor_only():
    cache, built = AdjacencyCache(), []
    first, second = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    for edges in (first, first, second, second, first):
        cache.get("relation", (edges,), lambda: built.append(1))
    assert len(built) == 3


def test_lightgcn_equals_pyg_get_embedding_forward_and_backward():
    data = random_graph()
    config = parse_config({"name": "lgcn", "model": "lightgcn", "embedding_dim": 16, "num_layers": 3})
    torch.manual_seed(0)
    model = build_model(config, SCHEMA, NUM_NODES)
    user, song = model(data)
    reference = model.model.get_embedding(model.homogeneous_edges(data))  # PyG's per-edge LGConv messages
    assert torch.allclose(torch.cat([user, song]), reference, atol=1e-6)
    weight = torch.randn_like(reference)
    (new_grad,) = torch.autograd.grad((torch.cat(model(data)) * weight).sum(), model.model.embedding.weight)
    (old_grad,) = torch.autograd.grad((reference * weight).sum(), model.model.embedding.weight)
    assert torch.allclose(new_grad, old_grad, atol=1e-6)


def reference_gat(model, data: HeteroData):
    """The enhanced GAT with each relation's messages computed by its GATConv's own message passing."""
    x = {t: model.embeddings[t].weight for t in model.node_types}
    outputs = [x]
    for layer in model.layers:
        messages = {}
        for edge_type in layer.edge_types:
            src, _, dst = edge_type
            conv, store = layer.convs[relation_key(edge_type)], data[edge_type]
            src_degree = torch.bincount(store.edge_index[0], minlength=NUM_NODES[src]).clamp(min=1).float()
            dst_degree = torch.bincount(store.edge_index[1], minlength=NUM_NODES[dst]).clamp(min=1).float()
            edge_attr = standardized(store.edge_attr.float()) if conv.edge_dim else None
            message = conv((x[src] * src_degree.rsqrt()[:, None], x[dst]), store.edge_index, edge_attr=edge_attr)
            message = message * dst_degree.sqrt()[:, None]
            messages[dst] = messages[dst] + message if dst in messages else message
        x = {t: x[t] + m if model.residual else m for t, m in messages.items()}
        outputs.append(x)
    return layer_mean(outputs, "user"), layer_mean(outputs, "song")


@pytest.mark.parametrize("transform,heads,residual", [(False, 1, True), (False, 2, False), (True, 2, True)])
def test_enhanced_gat_equals_message_passing(transform, heads, residual):
    data = random_graph(seed=heads)
    config = parse_config(
        {
            "name": "gat",
            "model": "gat_enhanced",
            "embedding_dim": 8,
            "num_layers": 2,
            "heads": heads,
            "dropout": 0.0,
            "transform": transform,
            "residual": residual,
        }
    )
    torch.manual_seed(3)
    model = build_model(config, SCHEMA, NUM_NODES).eval()
    parameters = [p for p in model.parameters() if p.requires_grad]  # without transform, W = I is fixed
    with torch.no_grad():  # non-trivial attention
        for parameter in parameters:
            parameter.add_(torch.randn_like(parameter) * 0.3)
    new, old = model(data), reference_gat(model, data)
    for a, b in zip(new, old):
        assert torch.allclose(a, b, atol=1e-5)
    weight = torch.randn(NUM_NODES["user"] + NUM_NODES["song"], 8)
    new_grads = torch.autograd.grad((torch.cat(new) * weight).sum(), parameters)
    old_grads = torch.autograd.grad((torch.cat(old) * weight).sum(), parameters)
    for a, b in zip(new_grads, old_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_enhanced_gat_edge_masks_equal_pyg_explain_hooks():
    data = random_graph(seed=5)
    config = parse_config({"name": "gat", "model": "gat_enhanced", "embedding_dim": 8, "num_layers": 2, "dropout": 0.0})
    torch.manual_seed(4)
    model = build_model(config, SCHEMA, NUM_NODES).eval()
    g = torch.Generator().manual_seed(6)
    masks = {r: torch.rand(data[r].edge_index.size(1), generator=g) for r in model.relations}
    model.edge_masks = masks
    new = model(data)
    model.edge_masks = None
    set_hetero_masks(model, masks, {r: data[r].edge_index for r in masks}, apply_sigmoid=False)
    try:
        old = reference_gat(model, data)
    finally:
        clear_masks(model)
    for a, b in zip(new, old):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(new[0], model(data)[0], atol=1e-3)  # the masks changed something


@pytest.mark.parametrize("heads", [1, 2])
def test_light_attention_conv_equals_scatter_of_per_edge_messages(heads):
    """TagFriendGAT's conv: the sparse products equal summing ``alpha * x_j`` messages per target."""
    g = torch.Generator().manual_seed(heads)
    edge_index = torch.stack([torch.randint(12, (60,), generator=g), torch.randint(9, (60,), generator=g)])
    weight = torch.rand(60, generator=g)
    conv = LightAttentionConv(8, heads=heads, weighted=True)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=g) * 0.3)
    x_src = torch.randn(12, 8, generator=g, requires_grad=True)
    x_dst = torch.randn(9, 8, generator=g)
    out, alpha = conv(x_src, x_dst, edge_index, weight)
    messages = x_src.view(12, heads, -1)[edge_index[0]] * alpha[..., None]
    reference = torch.zeros(9, heads, 8 // heads).index_add(0, edge_index[1], messages).reshape(9, 8)
    assert torch.allclose(out, reference, atol=1e-6)
    probe = torch.randn(9, 8, generator=g)
    new = torch.autograd.grad((out * probe).sum(), [x_src, *conv.parameters()], retain_graph=True)
    old = torch.autograd.grad((reference * probe).sum(), [x_src, *conv.parameters()])
    for a, b in zip(new, old):
        assert torch.allclose(a, b, atol=1e-5)
