"""Tests of the recommender models' public contract on a hand-built toy graph.

Toy graph (3 users, 4 songs, 2 artists, 2 genres)::

    listens:  u0 -> s0, u0 -> s1, u1 -> s1, u1 -> s2      (u2 has no listens, s3 no listener)
    by:       s0 -> a0, s1 -> a0, s2 -> a1, s3 -> a1
    has:      s0 -> g0, s1 -> g1, s2 -> g1, s3 -> g0

Message passing is tested by perturbation: change one node's id embedding and see which output
embeddings move. After one layer a node sees exactly its one-hop neighbours; after two layers its
two-hop neighbourhood.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv
from torch_geometric.nn.models import LightGCN

from spotify_engine_assets.core.config import parse_config
from spotify_engine_assets.core.models import MODEL_CLASSES, build_model
from spotify_engine_assets.core.models.baselines import MostPopular
from spotify_engine_assets.core.models.gat import BasicGAT, EdgeAttrGATConv, GenreAwareGAT, HeteroGATLayer
from spotify_engine_assets.core.models.lightgcn import LightGCN as LightGCNRecommender
from spotify_engine_assets.core.training.losses import pair_scores
from spotify_engine_assets.datasets.listening.graph import (
    BY,
    HAS,
    LISTENS,
    REV_BY,
    REV_HAS,
    REV_LISTENS,
    SCHEMA,
    add_reverse_edges,
)

torch.set_num_threads(1)

NUM_NODES = {"user": 3, "song": 4, "artist": 2, "genre": 2}
LISTEN_PAIRS = [(0, 0), (0, 1), (1, 1), (1, 2)]
SONG_ARTIST = [(0, 0), (1, 0), (2, 1), (3, 1)]
SONG_GENRE = [(0, 0), (1, 1), (2, 1), (3, 0)]
LISTENERS = {0: {0}, 1: {0, 1}, 2: {1}, 3: set()}  # song -> users
CHANGED = 1e-4
UNCHANGED = 1e-6


def toy_graph(seed: int = 0) -> HeteroData:
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    for t, n in NUM_NODES.items():
        data[t].num_nodes = n
        data[t].node_id = torch.arange(n) + 100
    data[LISTENS].edge_index = torch.tensor(LISTEN_PAIRS).t().contiguous()
    data[LISTENS].edge_attr = torch.rand(len(LISTEN_PAIRS), 3, generator=g)
    data[BY].edge_index = torch.tensor(SONG_ARTIST).t().contiguous()
    data[HAS].edge_index = torch.tensor(SONG_GENRE).t().contiguous()
    return add_reverse_edges(data)


@pytest.fixture
def data():
    return toy_graph()


def model_of(kind: str, num_nodes: dict[str, int] = NUM_NODES, **settings):
    """``build_model`` of a ``kind`` config with ``settings`` (seeded by the config's ``seed``)."""
    return build_model(parse_config({"name": f"toy_{kind}", "model": kind, **settings}), SCHEMA, num_nodes)


def gat_enhanced(num_layers: int, heads: int = 2, seed: int = 0, **kwargs) -> GenreAwareGAT:
    model = model_of(
        "gat_enhanced", embedding_dim=8, num_layers=num_layers, heads=heads, dropout=0.0, seed=seed, **kwargs
    )
    return model.eval()


def gat_basic(seed: int = 0, heads: int = 1) -> BasicGAT:
    return model_of("gat_basic", embedding_dim=8, heads=heads, dropout=0.0, seed=seed).eval()


def lightgcn(embedding_dim: int, num_layers: int, seed: int = 0) -> LightGCNRecommender:
    return model_of("lightgcn", {"user": 3, "song": 4}, embedding_dim=embedding_dim, num_layers=num_layers, seed=seed)


def listens_view(edges: torch.Tensor, num_users: int, num_songs: int) -> HeteroData:
    """A view holding only listens edges (what MostPopular counts)."""
    view = HeteroData()
    view["user"].num_nodes, view["song"].num_nodes = num_users, num_songs
    view[LISTENS].edge_index = edges
    return view


@torch.no_grad()
def moved_by(model, data: HeteroData, node_type: str, row: int) -> tuple[set[int], set[int]]:
    """Perturb one id embedding; return (users whose output moved, songs whose output moved).

    Also asserts that every output either moved clearly or not at all (no borderline cases).
    """
    user0, song0 = model(data)
    weight = model.embeddings[node_type].weight
    saved = weight[row].clone()
    weight[row] += torch.randn(weight.size(1), generator=torch.Generator().manual_seed(row + 7))
    user1, song1 = model(data)
    weight[row] = saved
    moved = []
    for before, after in ((user0, user1), (song0, song1)):
        delta = (after - before).abs().amax(dim=1)
        assert ((delta > CHANGED) | (delta < UNCHANGED)).all(), delta
        moved.append({int(i) for i in torch.nonzero(delta > CHANGED).flatten()})
    return moved[0], moved[1]


# ---------------------------------------------------------------------------------- GenreAwareGAT


def test_enhanced_output_shapes(data):
    model = gat_enhanced(num_layers=2)
    user, song = model(data)
    assert user.shape == (3, 8) and song.shape == (4, 8)
    user2, song2, attention = model(data, return_attention=True)
    assert torch.allclose(user, user2) and torch.allclose(song, song2)
    assert isinstance(attention, dict) and attention


def test_enhanced_one_layer_isolated_user_depends_only_on_own_embedding(data):
    model = gat_enhanced(num_layers=1)
    for node_type, n in NUM_NODES.items():
        for row in range(n):
            users, _ = moved_by(model, data, node_type, row)
            if node_type == "user" and row == 2:
                assert users == {2}
            else:
                assert 2 not in users, (node_type, row)


@pytest.mark.parametrize("song", range(4))
def test_enhanced_one_layer_song_reaches_exactly_its_listeners(data, song):
    model = gat_enhanced(num_layers=1)
    users, songs = moved_by(model, data, "song", song)
    assert users == LISTENERS[song]
    assert songs == {song}  # songs do not receive from songs in one layer


@pytest.mark.parametrize("user", range(3))
def test_enhanced_one_layer_user_reaches_exactly_its_songs(data, user):
    model = gat_enhanced(num_layers=1)
    users, songs = moved_by(model, data, "user", user)
    assert users == {user}
    assert songs == {s for s, listeners in LISTENERS.items() if user in listeners}


@pytest.mark.parametrize("genre, genre_songs, genre_users", [(0, {0, 3}, {0}), (1, {1, 2}, {0, 1})])
def test_enhanced_genre_reaches_its_songs_then_their_listeners(data, genre, genre_songs, genre_users):
    one = gat_enhanced(num_layers=1)
    users, songs = moved_by(one, data, "genre", genre)
    assert songs == genre_songs
    assert users == set()  # genre -> song -> user needs two hops
    two = gat_enhanced(num_layers=2)
    users, songs = moved_by(two, data, "genre", genre)
    assert users == genre_users
    assert 2 not in users  # the isolated user never hears of any genre


@pytest.mark.parametrize("artist, artist_songs, artist_users", [(0, {0, 1}, {0, 1}), (1, {2, 3}, {1})])
def test_enhanced_artist_reaches_its_songs_then_their_listeners(data, artist, artist_songs, artist_users):
    users, songs = moved_by(gat_enhanced(num_layers=1), data, "artist", artist)
    assert songs == artist_songs and users == set()
    users, _ = moved_by(gat_enhanced(num_layers=2), data, "artist", artist)
    assert users == artist_users


def test_enhanced_two_layers_song_reaches_only_two_hop_users(data):
    # s0 -> u0 (1 hop); u1 is 3 hops away (s0 -> u0 -> s1 -> u1)
    users, _ = moved_by(gat_enhanced(num_layers=2), data, "song", 0)
    assert users == {0}


def test_enhanced_uses_listens_edge_attributes(data):
    with_attr = gat_enhanced(num_layers=1)
    user0, song0 = with_attr(data)
    changed = data.clone()
    changed[LISTENS].edge_attr = data[LISTENS].edge_attr.clone()
    # swap the attributes of u1's two edges (u1 -> s1, u1 -> s2): the columns' mean and standard
    # deviation (the model standardizes attributes) stay the same, so every other edge keeps its own
    changed[LISTENS].edge_attr[[2, 3]] = data[LISTENS].edge_attr[[3, 2]]
    changed[REV_LISTENS].edge_attr = changed[LISTENS].edge_attr
    user1, song1 = with_attr(changed)
    # attributes enter the attention: u1 attends over s1 and s2, s1 over u0 and u1
    assert (user1[1] - user0[1]).abs().max() > CHANGED
    assert (song1[1] - song0[1]).abs().max() > CHANGED
    # u0's incoming edges (from s0, s1) and s2's single edge keep their weights
    assert torch.allclose(user1[0], user0[0], atol=UNCHANGED, rtol=0)
    assert torch.allclose(song1[2], song0[2], atol=UNCHANGED, rtol=0)

    without = gat_enhanced(num_layers=1, use_edge_attr=False)
    a, b = without(data), without(changed)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_enhanced_attention_per_relation(data):
    num_layers, heads = 2, 2
    model = gat_enhanced(num_layers=num_layers, heads=heads)
    _, _, attention = model(data, return_attention=True)
    by_relation = {"__".join(r): r for r in model.relations}
    assert set(by_relation) == {"__".join(r) for r in (LISTENS, REV_LISTENS, BY, REV_BY, HAS, REV_HAS)}
    seen = dict.fromkeys(by_relation, 0)
    for name, (index, alpha) in attention.items():
        relation = name.split("/")[-1]
        assert relation in by_relation, name
        seen[relation] += 1
        edge_type = by_relation[relation]
        _check_attention(index, alpha, data[edge_type].edge_index, data[edge_type[2]].num_nodes, heads)
    # the last layer only passes messages into users and songs (its artist and genre outputs
    # would be unused); earlier layers pass along every relation
    into_user_or_song = {key for key, r in by_relation.items() if r[2] in ("user", "song")}
    assert seen == {key: num_layers if key in into_user_or_song else num_layers - 1 for key in by_relation}
    assert {name.split("/")[0] for name in attention} == {f"layer{d}" for d in range(num_layers)}


def _check_attention(index, alpha, edge_index, num_dst, heads):
    assert torch.equal(index, edge_index)
    assert alpha.shape == (edge_index.size(1), heads)
    assert (alpha >= 0).all()
    total = torch.zeros(num_dst, heads).index_add_(0, edge_index[1], alpha)
    has_incoming = torch.bincount(edge_index[1], minlength=num_dst) > 0
    assert torch.allclose(total[has_incoming], torch.ones(int(has_incoming.sum()), heads), atol=1e-5)
    assert (total[~has_incoming] == 0).all()


def test_enhanced_attention_is_not_uniform_for_a_multi_edge_destination(data):
    """Song s1 has two listeners; its attention over them should depend on the features."""
    model = gat_enhanced(num_layers=1, heads=2)
    _, _, attention = model(data, return_attention=True)
    ((index, alpha),) = [v for k, v in attention.items() if k.endswith("user__listens__song")]
    into_s1 = alpha[index[1] == 1]
    assert into_s1.shape == (2, 2)
    assert not torch.allclose(into_s1, torch.full_like(into_s1, 0.5), atol=1e-4)


def test_enhanced_is_deterministic_in_eval_mode(data):
    model = gat_enhanced(num_layers=2)
    a, b = model(data), model(data)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    same = gat_enhanced(num_layers=2)
    assert torch.equal(same(data)[0], a[0])


def test_enhanced_rejects_bad_shapes():
    with pytest.raises(ValueError):
        model_of("gat_enhanced", embedding_dim=8, num_layers=0)
    # the enhanced model averages its heads: any head count fits any hidden size (the config class
    # refuses 10 % 3 for every GAT kind, so the model is built from an unvalidated copy)
    config = parse_config({"name": "toy", "model": "gat_enhanced", "embedding_dim": 8}).model_copy(
        update={"embedding_dim": 10, "heads": 3}
    )
    assert build_model(config, SCHEMA, NUM_NODES)(toy_graph())[0].shape == (3, 10)
    with pytest.raises(ValueError, match="divisible"):
        HeteroGATLayer([LISTENS], dim=9, heads=2)


def _uniform_attention(model: GenreAwareGAT) -> GenreAwareGAT:
    """Zero every attention vector: all logits 0, so each node weighs its neighbours equally."""
    with torch.no_grad():
        for layer in model.layers:
            for conv in layer.convs.values():
                conv.att_src.zero_()
                conv.att_dst.zero_()
                if conv.att_edge is not None:
                    conv.att_edge.zero_()
    return model


def _dense_relation(edge_index: torch.Tensor, num_src: int, num_dst: int) -> torch.Tensor:
    """[num_dst, num_src] matrix D_dst^-1/2 A D_src^-1/2 of one relation."""
    adjacency = torch.zeros(num_dst, num_src, dtype=torch.float64)
    adjacency[edge_index[1], edge_index[0]] = 1.0
    dst = adjacency.sum(1).clamp(min=1).pow(-0.5)
    src = adjacency.sum(0).clamp(min=1).pow(-0.5)
    return dst[:, None] * adjacency * src[None, :]


def test_enhanced_uniform_attention_one_layer_is_lightgcn(data):
    """With uniform attention, no artist/genre signal (zero embeddings) and one layer, the
    enhanced model is exactly one LightGCN layer on the listens graph: the attention only
    reweights LightGCN's symmetric normalisation."""
    model = _uniform_attention(gat_enhanced(num_layers=1, residual=False))
    with torch.no_grad():
        model.embeddings["artist"].weight.zero_()
        model.embeddings["genre"].weight.zero_()
    user, song = model(data)
    x = torch.cat([model.embeddings["user"].weight, model.embeddings["song"].weight]).detach()
    dense = _dense_lightgcn(x, LISTEN_PAIRS, 3, num_layers=1)
    assert torch.allclose(torch.cat([user, song]), dense, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_enhanced_uniform_attention_two_layers_matches_dense_propagation(data, residual):
    """Two layers over all six relations against a dense computation: each relation contributes
    D_dst^-1/2 A D_src^-1/2 h_src, a node sums its relations, and the output is the layer mean."""
    model = _uniform_attention(gat_enhanced(num_layers=2, residual=residual))
    user, song = model(data)
    h = {t: model.embeddings[t].weight.detach().double() for t in NUM_NODES}
    layers = [(h["user"], h["song"])]
    for _ in range(2):
        messages = {t: torch.zeros(n, 8, dtype=torch.float64) for t, n in NUM_NODES.items()}
        for src, rel, dst in model.relations:
            matrix = _dense_relation(data[src, rel, dst].edge_index, NUM_NODES[src], NUM_NODES[dst])
            messages[dst] += matrix @ h[src]
        h = {t: h[t] + messages[t] if residual else messages[t] for t in NUM_NODES}
        layers.append((h["user"], h["song"]))
    expected_user = torch.stack([u for u, _ in layers]).mean(0).float()
    expected_song = torch.stack([s for _, s in layers]).mean(0).float()
    assert torch.allclose(user, expected_user, atol=1e-6)
    assert torch.allclose(song, expected_song, atol=1e-6)
    other = _uniform_attention(gat_enhanced(num_layers=2, residual=not residual))
    assert not torch.allclose(other(data)[0], user, atol=1e-4)


def test_enhanced_messages_are_embeddings_unless_transform(data):
    """transform=False: each relation's message map is a frozen identity (only attention is
    learned); transform=True learns it."""
    fixed = gat_enhanced(num_layers=2)
    for layer in fixed.layers:
        for conv in layer.convs.values():
            assert torch.equal(conv.lin.weight, torch.eye(8).repeat(2, 1))
            assert not conv.lin.weight.requires_grad
    learned = gat_enhanced(num_layers=2, transform=True)
    conv = learned.layers[0].convs["user__listens__song"]
    assert conv.lin.weight.requires_grad
    assert not torch.equal(conv.lin.weight, torch.eye(8).repeat(2, 1))
    user, song = learned(data)
    (user.sum() + song.sum()).backward()
    assert conv.lin.weight.grad is not None and conv.lin.weight.grad.abs().sum() > 0


def test_edge_attr_gat_conv_equals_gat_conv():
    """The cheaper edge-attribute term gives GATConv's own outputs, attention and gradients."""
    torch.manual_seed(0)
    reference = GATConv(8, 8, heads=3, concat=False, add_self_loops=False, edge_dim=3, bias=False)
    fast = EdgeAttrGATConv(8, 8, heads=3, concat=False, add_self_loops=False, edge_dim=3, bias=False)
    fast.load_state_dict(reference.state_dict())
    x_src, x_dst = torch.randn(5, 8), torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [0, 0, 1, 2, 3, 3]])
    edge_attr = torch.randn(6, 3)
    out_a, (_, alpha_a) = reference((x_src, x_dst), edge_index, edge_attr=edge_attr, return_attention_weights=True)
    out_b, (_, alpha_b) = fast((x_src, x_dst), edge_index, edge_attr=edge_attr, return_attention_weights=True)
    assert torch.allclose(out_a, out_b, atol=1e-6) and torch.allclose(alpha_a, alpha_b, atol=1e-6)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for name, parameter in reference.named_parameters():
        assert torch.allclose(parameter.grad, dict(fast.named_parameters())[name].grad, atol=1e-5), name


# ---------------------------------------------------------------------------------- BasicGAT


def test_basic_output_shapes(data):
    user, song = gat_basic()(data)
    assert user.shape == (3, 8) and song.shape == (4, 8)


@pytest.mark.parametrize("song", range(4))
def test_basic_song_reaches_exactly_its_listeners(data, song):
    users, songs = moved_by(gat_basic(), data, "song", song)
    assert users == LISTENERS[song]
    assert songs == {song}


@pytest.mark.parametrize("artist, artist_songs", [(0, {0, 1}), (1, {2, 3})])
def test_basic_artist_reaches_exactly_its_songs_and_no_user(data, artist, artist_songs):
    users, songs = moved_by(gat_basic(), data, "artist", artist)
    assert songs == artist_songs
    assert users == set()


def test_basic_isolated_user_depends_only_on_own_embedding(data):
    model = gat_basic()
    for node_type in ("user", "song", "artist"):
        for row in range(NUM_NODES[node_type]):
            users, _ = moved_by(model, data, node_type, row)
            assert (2 in users) == (node_type == "user" and row == 2), (node_type, row)


def test_basic_ignores_genres(data):
    model = gat_basic()
    assert "genre" not in model.embeddings
    no_genre = data.clone()
    no_genre[HAS].edge_index = torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]])
    no_genre[REV_HAS].edge_index = no_genre[HAS].edge_index.flip(0)
    assert torch.equal(model(data)[0], model(no_genre)[0])


def test_basic_attention(data):
    heads = 2
    model = gat_basic(heads=heads)
    user, song, attention = model(data, return_attention=True)
    assert torch.allclose(user, model(data)[0])
    relations = {"__".join(r): r for r in model.relations}
    assert {k.split("/")[-1] for k in attention} == set(relations)
    assert len(attention) == len(relations)
    for name, (index, alpha) in attention.items():
        edge_type = relations[name.split("/")[-1]]
        _check_attention(index, alpha, data[edge_type].edge_index, data[edge_type[2]].num_nodes, heads)


# ---------------------------------------------------------------------------------- scoring


def test_score_is_dot_product_and_ego_l2(data):
    model = gat_basic()
    user, song = model(data)
    users, songs = torch.tensor([0, 2, 1]), torch.tensor([3, 0, 1])
    expected = torch.stack([user[u] @ song[s] for u, s in zip(users.tolist(), songs.tolist())])
    assert torch.allclose(pair_scores(user, song, users, songs), expected, atol=1e-6)
    emb = model.embeddings
    l2 = (emb["user"].weight[users].pow(2).sum() + emb["song"].weight[songs].pow(2).sum()) / 3
    assert torch.allclose(model.ego_l2(users, songs), l2)


def test_gradients_reach_embeddings_and_attention_parameters(data):
    model = gat_enhanced(num_layers=2).train()
    user, song = model(data)
    pair_scores(user, song, torch.tensor([0, 1]), torch.tensor([0, 2])).sum().backward()
    assert model.embeddings["genre"].weight.grad is not None
    assert model.embeddings["genre"].weight.grad.abs().sum() > 0
    grads = [p.grad for p in model.layers.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_model_classes_and_parameter_count():
    assert MODEL_CLASSES["gat_basic"] is BasicGAT
    assert MODEL_CLASSES["gat_enhanced"] is GenreAwareGAT
    assert MODEL_CLASSES["lightgcn"] is LightGCNRecommender
    model = lightgcn(embedding_dim=5, num_layers=2)
    assert model.parameter_count() == 7 * 5


# ---------------------------------------------------------------------------------- LightGCN


def _dense_lightgcn(x: torch.Tensor, pairs, num_users: int, num_layers: int) -> torch.Tensor:
    """mean_{l=0..L} (D^-1/2 A D^-1/2)^l x on the symmetric user-song adjacency."""
    n = x.size(0)
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    for u, s in pairs:
        adjacency[u, num_users + s] += 1
        adjacency[num_users + s, u] += 1
    degree = adjacency.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    norm = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    h, total = x.double(), x.double().clone()
    for _ in range(num_layers):
        h = norm @ h
        total = total + h
    return (total / (num_layers + 1)).float()


@pytest.mark.parametrize("num_layers", [1, 3])
def test_lightgcn_equals_pyg_lightgcn_on_homogeneous_graph(data, num_layers):
    model = lightgcn(embedding_dim=6, num_layers=num_layers, seed=3)
    user, song = model(data)
    assert user.shape == (3, 6) and song.shape == (4, 6)

    reference = LightGCN(7, 6, num_layers)
    reference.embedding.weight.data.copy_(model.model.embedding.weight.data)
    # built independently: songs offset by the user count, both directions, song->user first
    src = [3 + s for _, s in LISTEN_PAIRS] + [u for u, _ in LISTEN_PAIRS]
    dst = [u for u, _ in LISTEN_PAIRS] + [3 + s for _, s in LISTEN_PAIRS]
    expected = reference.get_embedding(torch.tensor([src, dst]))
    assert torch.allclose(torch.cat([user, song]), expected, atol=1e-6)

    dense = _dense_lightgcn(model.model.embedding.weight.detach(), LISTEN_PAIRS, 3, num_layers)
    assert torch.allclose(torch.cat([user, song]), dense, atol=1e-5)

    # with attention requested: same embeddings and an empty attention dict
    user2, song2, attention = model(data, return_attention=True)
    assert attention == {} and torch.equal(user2, user) and torch.equal(song2, song)


def test_lightgcn_isolated_nodes_keep_scaled_own_embedding(data):
    model = lightgcn(embedding_dim=4, num_layers=2)
    user, song = model(data)
    weight = model.model.embedding.weight
    # u2 and s3 have no edges: only the layer-0 term of the mean survives
    assert torch.allclose(user[2], weight[2] / 3, atol=1e-6)
    assert torch.allclose(song[3], weight[3 + 3] / 3, atol=1e-6)


def test_lightgcn_follows_a_new_view(data):
    """A different training view (other listens edges) gives the embeddings of that view."""
    model = lightgcn(embedding_dim=4, num_layers=2)
    model(data)
    other = data.clone()
    other[LISTENS].edge_index = torch.tensor([[0, 2, 2, 1], [3, 0, 1, 2]])
    user, song = model(other)
    dense = _dense_lightgcn(model.model.embedding.weight.detach(), [(0, 3), (2, 0), (2, 1), (1, 2)], 3, 2)
    assert torch.allclose(torch.cat([user, song]), dense, atol=1e-5)


def test_lightgcn_ego_l2(data):
    model = lightgcn(embedding_dim=4, num_layers=1)
    w = model.model.embedding.weight
    users, songs = torch.tensor([0, 2]), torch.tensor([1, 3])
    expected = (w[users].pow(2).sum() + w[songs + 3].pow(2).sum()) / 2
    assert torch.allclose(model.ego_l2(users, songs), expected)


# ---------------------------------------------------------------------------------- MostPopular


def test_most_popular_ranks_songs_by_training_listeners():
    # listeners per song: s0 1, s1 3, s2 0, s3 2, s4 4
    edges = torch.tensor([[0, 0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 1, 1, 3, 3, 4, 4, 4, 4]])
    model = model_of("most_popular", {"user": 4, "song": 5}).prepare(listens_view(edges, 4, 5))
    assert isinstance(model, MostPopular)
    assert model.popularity.tolist() == [1.0, 3.0, 0.0, 2.0, 4.0]
    user_emb, song_emb = model.factors()
    assert user_emb.shape == (4, 1) and song_emb.shape == (5, 1)
    scores = user_emb @ song_emb.T
    for row in scores:
        assert torch.argsort(row, descending=True).tolist() == [4, 1, 3, 0, 2]


def test_most_popular_before_fit_and_unseen_songs():
    model = model_of("most_popular", {"user": 2, "song": 3})
    assert model.popularity.tolist() == [0.0, 0.0, 0.0]
    model.fit(listens_view(torch.tensor([[0], [2]]), 2, 3))
    assert model.popularity.tolist() == [0.0, 0.0, 1.0]
