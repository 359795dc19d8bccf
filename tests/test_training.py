"""Tests of the training harness: negative sampling, epochs and early stopping, restoring the
best weights (a deep copy), and determinism."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.lib.configs import ModelConfig
from spotify_engine_assets.lib.graph import BY, HAS, LISTENS, add_reverse_edges
from spotify_engine_assets.lib.metrics import recall_at_k
from spotify_engine_assets.lib.models import BasicGATRecommender, GenreAwareGAT, LightGCNRecommender, MostPopular
from spotify_engine_assets.lib.training import (
    build_model,
    embed,
    fit_most_popular,
    num_nodes_of,
    sample_negatives,
    train,
)

torch.set_num_threads(1)

KINDS = ("gat_basic", "gat_enhanced", "lightgcn")


def toy_problem(num_users: int = 8, num_songs: int = 40, per_user: int = 6, seed: int = 0):
    """Two taste clusters: the first half of the users plays the first half of the songs.

    Returns the message-passing view (training listens only) and one validation pair per user.
    """
    g = torch.Generator().manual_seed(seed)
    half = num_songs // 2
    train_pairs, valid_pairs = [], []
    for u in range(num_users):
        base = 0 if u < num_users // 2 else half
        songs = (torch.randperm(half, generator=g)[: per_user + 1] + base).tolist()
        train_pairs += [(u, s) for s in songs[:-1]]
        valid_pairs.append((u, songs[-1]))
    data = HeteroData()
    for t, n in {"user": num_users, "song": num_songs, "artist": 4, "genre": 2}.items():
        data[t].num_nodes = n
        data[t].node_id = torch.arange(n)
    data[LISTENS].edge_index = torch.tensor(train_pairs).t().contiguous()
    data[LISTENS].edge_attr = torch.rand(len(train_pairs), 3, generator=g)
    songs = torch.arange(num_songs)
    data[BY].edge_index = torch.stack([songs, songs % 4])
    data[HAS].edge_index = torch.stack([songs, (songs >= half).long()])
    return add_reverse_edges(data), torch.tensor(valid_pairs).t().contiguous()


def config(kind: str = "gat_basic", **overrides) -> ModelConfig:
    settings = dict(
        name=f"toy_{kind}",
        model=kind,
        embedding_dim=8,
        heads=2 if kind == "gat_enhanced" else 1,
        num_layers=2,
        lr=0.05,
        batch_size=16,
        max_epochs=30,
        patience=3,
        seed=0,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- negatives


def _known_keys(pairs: torch.Tensor, num_songs: int) -> torch.Tensor:
    return torch.sort(pairs[0] * num_songs + pairs[1]).values


def test_sample_negatives_never_returns_a_training_positive():
    num_users, num_songs = 200, 300
    g = torch.Generator().manual_seed(1)
    played = torch.rand(num_users, num_songs, generator=g) < 0.3  # 30% of songs per user
    pairs = played.nonzero().t()
    keys = _known_keys(pairs, num_songs)
    users = torch.randint(num_users, (50_000,), generator=g)
    negatives = sample_negatives(users, keys, num_songs, torch.Generator().manual_seed(2))
    assert negatives.shape == users.shape
    assert negatives.dtype == torch.int64
    assert ((negatives >= 0) & (negatives < num_songs)).all()
    assert not played[users, negatives].any()
    # spread over the catalogue, not a constant
    assert torch.unique(negatives).numel() > 0.9 * num_songs


def test_sample_negatives_is_reproducible_from_the_generator():
    pairs = torch.tensor([[0, 0, 1, 2], [1, 3, 0, 2]])
    keys = _known_keys(pairs, 10)
    users = torch.tensor([0, 1, 2] * 50)
    a = sample_negatives(users, keys, 10, torch.Generator().manual_seed(5))
    b = sample_negatives(users, keys, 10, torch.Generator().manual_seed(5))
    c = sample_negatives(users, keys, 10, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_negatives_for_a_heavy_listener():
    """A user who has played 95 of 100 songs must still get only unplayed songs (5 exist)."""
    num_songs = 100
    played_songs = torch.arange(95)
    pairs = torch.stack([torch.zeros(95, dtype=torch.long), played_songs])
    keys = _known_keys(pairs, num_songs)
    users = torch.zeros(2000, dtype=torch.long)
    negatives = sample_negatives(users, keys, num_songs, torch.Generator().manual_seed(0))
    returned_positives = int(torch.isin(negatives, played_songs).sum())
    assert returned_positives == 0, f"{returned_positives} of 2000 negatives are training positives"


# ---------------------------------------------------------------------------------- build_model


@pytest.mark.parametrize(
    "kind, cls", [("gat_basic", BasicGATRecommender), ("gat_enhanced", GenreAwareGAT), ("lightgcn", LightGCNRecommender)]
)
def test_build_model_kind_and_seeding(kind, cls):
    view, _ = toy_problem()
    a = build_model(config(kind), num_nodes_of(view))
    b = build_model(config(kind), num_nodes_of(view))
    c = build_model(config(kind, seed=1), num_nodes_of(view))
    assert isinstance(a, cls)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert not _states_equal(a.state_dict(), c.state_dict())


def test_build_model_rejects_most_popular():
    view, _ = toy_problem()
    with pytest.raises(ValueError, match="not trainable"):
        build_model(config("most_popular"), num_nodes_of(view))


def test_num_nodes_of():
    view, _ = toy_problem()
    assert num_nodes_of(view) == {"user": 8, "song": 40, "artist": 4, "genre": 2}


# ---------------------------------------------------------------------------------- train


def test_history_has_one_entry_per_epoch_without_early_stop():
    view, valid = toy_problem()
    cfg = config(max_epochs=5, patience=100)
    messages = []
    result = train(build_model(cfg, num_nodes_of(view)), view, valid, cfg, log=messages.append)
    assert result.epochs_run == 5
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    for entry in result.history:
        assert {"epoch", "loss", "valid_recall@10", "lr", "seconds"} <= set(entry)
        assert 0.0 <= entry["valid_recall@10"] <= 1.0
        assert entry["loss"] > 0
    assert result.history[0]["lr"] == pytest.approx(cfg.lr)
    assert sum(m.startswith("epoch ") for m in messages) == 5
    assert result.seconds > 0


def test_max_epochs_argument_overrides_config():
    view, valid = toy_problem()
    cfg = config(max_epochs=50, patience=100)
    result = train(build_model(cfg, num_nodes_of(view)), view, valid, cfg, max_epochs=2)
    assert result.epochs_run == 2 and len(result.history) == 2


def test_loss_decreases_on_toy_problem():
    view, valid = toy_problem()
    cfg = config(max_epochs=15, patience=100)
    result = train(build_model(cfg, num_nodes_of(view)), view, valid, cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_restores_best_state_not_final(kind):
    view, valid = toy_problem()
    cfg = config(kind)
    model = build_model(cfg, num_nodes_of(view))
    result = train(model, view, valid, cfg)
    recalls = [h["valid_recall@10"] for h in result.history]
    # bookkeeping: best epoch is the first epoch with the highest validation recall
    assert result.best_valid_recall == max(recalls)
    assert result.best_epoch == recalls.index(max(recalls)) + 1
    # early stopping ran (the precondition of the next checks)
    assert result.best_epoch < result.epochs_run <= cfg.max_epochs
    assert result.epochs_run - result.best_epoch == cfg.patience
    # the model holds the best weights, not the final ones
    assert _states_equal(model.state_dict(), result.best_state)
    assert not _states_equal(result.best_state, result.final_state)
    # and re-scoring it reproduces the best validation recall
    user, song = embed(model, view)
    assert recall_at_k(user, song, valid, view[LISTENS].edge_index, k=10) == pytest.approx(result.best_valid_recall)


def test_early_stop_when_validation_recall_never_improves():
    """With 10 songs every top-10 list holds every song: recall is 1.0 from epoch 1 on, so the
    best epoch is 1 and training stops exactly ``patience`` epochs later."""
    view, valid = toy_problem(num_users=4, num_songs=10, per_user=3)
    cfg = config(max_epochs=20, patience=4)
    model = build_model(cfg, num_nodes_of(view))
    result = train(model, view, valid, cfg)
    assert [h["valid_recall@10"] for h in result.history] == [1.0] * 5
    assert result.best_epoch == 1 and result.epochs_run == 5
    assert _states_equal(model.state_dict(), result.best_state)
    assert not _states_equal(result.best_state, result.final_state)


def test_best_state_is_a_deep_copy():
    view, valid = toy_problem()
    cfg = config(max_epochs=4, patience=100)
    model = build_model(cfg, num_nodes_of(view))
    result = train(model, view, valid, cfg)
    best = {k: v.clone() for k, v in result.best_state.items()}
    final = {k: v.clone() for k, v in result.final_state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert _states_equal(result.best_state, best)
    assert _states_equal(result.final_state, final)
    assert not _states_equal(model.state_dict(), best)
    # continuing to train the same model does not touch the recorded states either
    train(model, view, valid, cfg, max_epochs=1)
    assert _states_equal(result.best_state, best)


@pytest.mark.parametrize("kind", KINDS)
def test_training_is_deterministic(kind):
    view, valid = toy_problem()
    cfg = config(kind, max_epochs=4, patience=100)
    runs = []
    for _ in range(2):
        model = build_model(cfg, num_nodes_of(view))
        result = train(model, view, valid, cfg)
        history = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
        runs.append((history, model.state_dict(), result.final_state))
    assert runs[0][0] == runs[1][0]
    assert _states_equal(runs[0][1], runs[1][1])
    assert _states_equal(runs[0][2], runs[1][2])

    other = build_model(config(kind, max_epochs=4, patience=100, seed=1), num_nodes_of(view))
    result = train(other, view, valid, config(kind, max_epochs=4, patience=100, seed=1))
    assert not _states_equal(result.final_state, runs[0][2])


def test_validation_pairs_only_steer_selection():
    """Validation pairs never enter the loss: with other validation pairs (and too few epochs for
    the LR scheduler to react) the weights after a fixed number of epochs are identical."""
    view, valid = toy_problem()
    cfg = config(max_epochs=3, patience=100, lr_patience=3)
    a = build_model(cfg, num_nodes_of(view))
    ra = train(a, view, valid, cfg)
    other_valid = torch.stack([valid[0], (valid[1] + 7) % 40])
    b = build_model(cfg, num_nodes_of(view))
    rb = train(b, view, other_valid, cfg)
    assert [h["lr"] for h in ra.history] == [h["lr"] for h in rb.history] == [cfg.lr] * 3
    assert _states_equal(ra.final_state, rb.final_state)


# ---------------------------------------------------------------------------------- helpers


def test_embed_uses_eval_mode_and_restores_training_flag():
    view, _ = toy_problem()
    model = build_model(config("gat_enhanced", dropout=0.5), num_nodes_of(view))
    model.train()
    a = embed(model, view)
    b = embed(model, view)
    assert model.training
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # no dropout noise
    assert not a[0].requires_grad
    model.eval()
    embed(model, view)
    assert not model.training


def test_fit_most_popular_and_embed():
    view, _ = toy_problem()
    model = fit_most_popular(view)
    assert isinstance(model, MostPopular)
    counts = torch.bincount(view[LISTENS].edge_index[1], minlength=40).float()
    user, song = embed(model, view)
    assert user.shape == (8, 1)
    assert torch.equal(song.flatten(), counts)


def test_build_model_passes_enhanced_settings():
    view, _ = toy_problem()
    cfg = config("gat_enhanced", num_layers=3, heads=1, dropout=0.2, residual=False, use_edge_attr=False)
    model = build_model(cfg, num_nodes_of(view))
    assert len(model.layers) == 3 and model.residual is False and model.edge_dim == 0
    assert model.dropout.p == 0.2
    conv = model.layers[0].convs["user__listens__song"]
    assert conv.heads == 1 and conv.edge_dim is None and conv.dropout == 0.2


def test_enhanced_training_learns_attention_not_message_maps():
    """The enhanced model's message maps are frozen identities: training moves the embeddings
    and the attention vectors, never the maps."""
    view, valid = toy_problem()
    cfg = config("gat_enhanced", max_epochs=3, patience=100, residual=False)
    model = build_model(cfg, num_nodes_of(view))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, view, valid, cfg)
    after = model.state_dict()
    identity = torch.eye(cfg.embedding_dim).repeat(cfg.heads, 1)
    for key, value in after.items():
        if key.endswith("lin.weight"):
            assert torch.equal(value, identity), key
        elif key.startswith("embeddings.") or ("listens" in key and key.endswith(("att_src", "att_dst"))):
            # (song -> artist and genre -> song attention over a single neighbour gets no gradient)
            assert not torch.equal(value, before[key]), key



def test_on_epoch_sees_every_epoch_and_can_stop_training():
    """The per-epoch hook (used to prune hyperparameter trials) gets each history row, and an
    exception it raises stops training and propagates."""
    view, valid = toy_problem()
    cfg = config(max_epochs=6, patience=100)
    seen = []
    result = train(build_model(cfg, num_nodes_of(view)), view, valid, cfg, on_epoch=seen.append)
    assert seen == result.history and len(seen) == 6

    class Pruned(Exception):
        pass

    def stop_at_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Pruned(row["valid_recall@10"])

    with pytest.raises(Pruned):
        train(build_model(cfg, num_nodes_of(view)), view, valid, cfg, on_epoch=stop_at_two)
