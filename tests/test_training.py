"""Tests of the training harness: negative sampling, epochs and early stopping, restoring the
best weights (a deep copy), and determinism."""

from __future__ import annotations

import re

import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import ModelConfig, parse_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.evaluation.metrics import ranking_metrics
from spotify_engine_assets.core.models import build_model, embed
from spotify_engine_assets.core.models.baselines import MostPopular
from spotify_engine_assets.core.models.gat import BasicGAT, GenreAwareGAT
from spotify_engine_assets.core.models.lightgcn import LightGCN
from spotify_engine_assets.core.training.inputs import interaction_weights
from spotify_engine_assets.core.training.losses import attention_entropy, bpr_step_loss, orthogonality_penalty
from spotify_engine_assets.core.training.sampling import sample_negatives
from spotify_engine_assets.core.training.trainer import CHECKPOINT_FILE, epoch_progress, format_duration, train
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, SCHEMA, add_reverse_edges

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
    """The toy config of ``kind`` (a kind's config refuses fields it does not have: heads only for
    the attention models, no training field for most_popular)."""
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
    if kind == "lightgcn":
        del settings["heads"]
    elif kind == "most_popular":
        settings = dict(name=settings["name"], model=kind, seed=0)
    settings.update(overrides)
    return parse_config(settings)


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
    "kind, cls", [("gat_basic", BasicGAT), ("gat_enhanced", GenreAwareGAT), ("lightgcn", LightGCN)]
)
def test_build_model_kind_and_seeding(kind, cls):
    view, _ = toy_problem()
    a = build_model(config(kind), SCHEMA, num_nodes_of(view))
    b = build_model(config(kind), SCHEMA, num_nodes_of(view))
    c = build_model(config(kind, seed=1), SCHEMA, num_nodes_of(view))
    assert isinstance(a, cls)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert not _states_equal(a.state_dict(), c.state_dict())


def test_build_model_rejects_most_popular():
    # one model protocol: build_model builds every kind (most_popular too); it is training a
    # most_popular model that is refused
    view, valid = toy_problem()
    cfg = config("most_popular")
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    assert isinstance(model, MostPopular) and not model.trainable
    with pytest.raises(ValueError, match="not trainable"):
        train(model, view, valid, cfg)


def test_num_nodes_of():
    view, _ = toy_problem()
    assert num_nodes_of(view) == {"user": 8, "song": 40, "artist": 4, "genre": 2}


# ---------------------------------------------------------------------------------- train


def test_history_has_one_entry_per_epoch_without_early_stop():
    view, valid = toy_problem()
    cfg = config(max_epochs=5, patience=100)
    messages = []
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, log=messages.append)
    assert result.epochs_run == 5
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    for entry in result.history:
        assert {"epoch", "loss", "valid_recall@10", "lr", "seconds"} <= set(entry)
        assert 0.0 <= entry["valid_recall@10"] <= 1.0
        assert entry["loss"] > 0
    assert result.history[0]["lr"] == pytest.approx(cfg.lr)
    assert sum(m.startswith("epoch ") for m in messages) == 5
    assert result.seconds > 0
    # each line: epoch k/total, the loss, the validation metric, the pace and the time left
    line = re.compile(
        r"^epoch (\d)/5: loss \d+\.\d{4} valid recall@10 \d\.\d{4}.* \| (\d+\.\d\d) s/epoch, ETA (\d+) s$"
    )
    matches = [line.match(m) for m in messages if m.startswith("epoch ")]
    assert all(matches), messages
    assert [int(m.group(1)) for m in matches] == [1, 2, 3, 4, 5]
    assert matches[-1].group(3) == "0"  # nothing left after the last epoch


def test_epoch_progress_pace_and_eta():
    rows = [{"seconds": 0.5}, {"seconds": 0.54}]
    assert epoch_progress(rows, 49) == "0.52 s/epoch, ETA 25 s"
    assert epoch_progress(rows, 0) == "0.52 s/epoch, ETA 0 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(3900) == "1 h 05 min"


def test_max_epochs_argument_overrides_config():
    view, valid = toy_problem()
    cfg = config(max_epochs=50, patience=100)
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, max_epochs=2)
    assert result.epochs_run == 2 and len(result.history) == 2


def test_loss_decreases_on_toy_problem():
    view, valid = toy_problem()
    cfg = config(max_epochs=15, patience=100)
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_restores_best_state_not_final(kind):
    view, valid = toy_problem()
    cfg = config(kind)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    result = train(model, view, valid, cfg)
    recalls = [h["valid_recall@10"] for h in result.history]
    # bookkeeping: best epoch is the first epoch with the highest validation recall
    assert result.best_valid == max(recalls)
    assert result.best_epoch == recalls.index(max(recalls)) + 1
    # early stopping ran (the precondition of the next checks)
    assert result.best_epoch < result.epochs_run <= cfg.max_epochs
    assert result.epochs_run - result.best_epoch == cfg.patience
    # the model holds the best weights, not the final ones
    assert _states_equal(model.state_dict(), result.best_state)
    assert not _states_equal(result.best_state, result.final_state)
    # and re-scoring it reproduces the best validation recall
    user, song = embed(model, view)
    recall = ranking_metrics(user, song, valid, view[LISTENS].edge_index, ks=(10,))["recall@10"]
    assert recall == pytest.approx(result.best_valid)


def test_early_stop_when_validation_recall_never_improves():
    """With 10 songs every top-10 list holds every song: recall is 1.0 from epoch 1 on, so the
    best epoch is 1 and training stops exactly ``patience`` epochs later."""
    view, valid = toy_problem(num_users=4, num_songs=10, per_user=3)
    cfg = config(max_epochs=20, patience=4)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    result = train(model, view, valid, cfg)
    assert [h["valid_recall@10"] for h in result.history] == [1.0] * 5
    assert result.best_epoch == 1 and result.epochs_run == 5
    assert _states_equal(model.state_dict(), result.best_state)
    assert not _states_equal(result.best_state, result.final_state)


def test_best_state_is_a_deep_copy():
    view, valid = toy_problem()
    cfg = config(max_epochs=4, patience=100)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
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
        model = build_model(cfg, SCHEMA, num_nodes_of(view))
        result = train(model, view, valid, cfg)
        history = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in result.history]
        runs.append((history, model.state_dict(), result.final_state))
    assert runs[0][0] == runs[1][0]
    assert _states_equal(runs[0][1], runs[1][1])
    assert _states_equal(runs[0][2], runs[1][2])

    other = build_model(config(kind, max_epochs=4, patience=100, seed=1), SCHEMA, num_nodes_of(view))
    result = train(other, view, valid, config(kind, max_epochs=4, patience=100, seed=1))
    assert not _states_equal(result.final_state, runs[0][2])


def test_validation_pairs_only_steer_selection():
    """Validation pairs never enter the loss: with other validation pairs (and too few epochs for
    the LR scheduler to react) the weights after a fixed number of epochs are identical."""
    view, valid = toy_problem()
    cfg = config(max_epochs=3, patience=100, lr_patience=3)
    a = build_model(cfg, SCHEMA, num_nodes_of(view))
    ra = train(a, view, valid, cfg)
    other_valid = torch.stack([valid[0], (valid[1] + 7) % 40])
    b = build_model(cfg, SCHEMA, num_nodes_of(view))
    rb = train(b, view, other_valid, cfg)
    assert [h["lr"] for h in ra.history] == [h["lr"] for h in rb.history] == [cfg.lr] * 3
    assert _states_equal(ra.final_state, rb.final_state)


# ---------------------------------------------------------------------------------- helpers


def test_embed_uses_eval_mode_and_restores_training_flag():
    view, _ = toy_problem()
    model = build_model(config("gat_enhanced", dropout=0.5), SCHEMA, num_nodes_of(view))
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
    model = build_model(config("most_popular"), SCHEMA, num_nodes_of(view)).prepare(view)
    assert isinstance(model, MostPopular)
    counts = torch.bincount(view[LISTENS].edge_index[1], minlength=40).float()
    user, song = embed(model, view)
    assert user.shape == (8, 1)
    assert torch.equal(song.flatten(), counts)


def test_build_model_passes_enhanced_settings():
    view, _ = toy_problem()
    cfg = config("gat_enhanced", num_layers=3, heads=1, dropout=0.2, residual=False, use_edge_attr=False)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    assert len(model.layers) == 3 and model.residual is False and model.edge_dim == 0
    assert model.config.dropout == 0.2
    conv = model.layers[0].convs["user__listens__song"]
    assert conv.heads == 1 and conv.edge_dim is None and conv.dropout == 0.2


def test_enhanced_training_learns_attention_not_message_maps():
    """The enhanced model's message maps are frozen identities: training moves the embeddings
    and the attention vectors, never the maps."""
    view, valid = toy_problem()
    cfg = config("gat_enhanced", max_epochs=3, patience=100, residual=False)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
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
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, on_epoch=seen.append)
    assert seen == result.history and len(seen) == 6

    class Pruned(Exception):
        pass

    def stop_at_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Pruned(row["valid_recall@10"])

    with pytest.raises(Pruned):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, on_epoch=stop_at_two)


# ---------------------------------------------------------------------------------- weighted BPR, negatives, accumulation


def _weighted_graph(num_edges: int = 12):
    """A full listening graph with the raw listens columns, and a train/held-out index."""
    view, _ = toy_problem()
    data = view.clone()
    g = torch.Generator().manual_seed(3)
    edges = data[LISTENS].edge_index.size(1)
    data[LISTENS].play_count = torch.randint(1, 50, (edges,), generator=g).float()
    data[LISTENS].mean_completion = torch.rand(edges, generator=g)
    data[LISTENS].last_played = 1.7e9 + torch.rand(edges, generator=g).double() * 86400 * 60
    train_index = torch.arange(0, edges, 2)
    return data, train_index


def test_interaction_weights_unweighted_config_is_none():
    data, train_index = _weighted_graph()
    assert interaction_weights(config(), data, SCHEMA, train_index) is None


def test_interaction_weights_formula_and_normalisation():
    data, train_index = _weighted_graph()
    listens = data[LISTENS]
    completion = interaction_weights(config(weight_completion=2.0), data, SCHEMA, train_index)
    expected = 1 + 2.0 * listens.mean_completion[train_index].double()
    assert torch.allclose(completion.double(), expected / expected.mean(), atol=1e-6)
    assert completion.mean().item() == pytest.approx(1.0, abs=1e-6)

    plays = interaction_weights(config(weight_play_count=1.0), data, SCHEMA, train_index)
    log_plays = torch.log1p(listens.play_count[train_index].double())
    expected = 1 + log_plays / log_plays.max()
    assert torch.allclose(plays.double(), expected / expected.mean(), atol=1e-6)
    # more plays, more weight
    order = torch.argsort(listens.play_count[train_index])
    assert (plays[order].diff() >= -1e-7).all()


def test_interaction_weights_recency_half_life():
    data, train_index = _weighted_graph()
    last = data[LISTENS].last_played
    newest = last[train_index].max()
    last[train_index[0]] = newest - 10 * 86400  # exactly one half-life old
    last[train_index[1]] = newest - 20 * 86400  # two half-lives
    last[train_index[2]] = newest
    weights = interaction_weights(config(weight_recency=1.0, half_life_days=10.0), data, SCHEMA, train_index)
    raw = weights / weights[2] * 2.0  # the newest edge has raw weight 1 + 1
    assert raw[0].item() == pytest.approx(1.5, rel=1e-5)
    assert raw[1].item() == pytest.approx(1.25, rel=1e-5)


def test_interaction_weights_read_only_training_edges():
    """Held-out edges' columns (and their times) never change a training weight."""
    data, train_index = _weighted_graph()
    cfg = config(weight_completion=1.0, weight_play_count=1.0, weight_recency=1.0, half_life_days=5.0)
    before = interaction_weights(cfg, data, SCHEMA, train_index)
    heldout = torch.arange(1, data[LISTENS].edge_index.size(1), 2)
    data[LISTENS].play_count[heldout] = 10_000.0
    data[LISTENS].mean_completion[heldout] = 0.0
    data[LISTENS].last_played[heldout] = 2.5e9  # far in the future
    assert torch.equal(interaction_weights(cfg, data, SCHEMA, train_index), before)


def test_interaction_weights_missing_column_fails_before_training():
    data, train_index = _weighted_graph()
    del data[LISTENS].last_played
    with pytest.raises(ValueError, match=r"'toy_gat_basic'.*weight_recency needs listens\.last_played"):
        interaction_weights(config(weight_recency=1.0), data, SCHEMA, train_index)
    assert interaction_weights(config(weight_completion=1.0), data, SCHEMA, train_index) is not None


def test_bpr_step_loss_weights_and_several_negatives():
    view, _ = toy_problem()
    model = build_model(config(), SCHEMA, num_nodes_of(view))
    users = torch.tensor([0, 1, 5, 7])
    positives = torch.tensor([1, 2, 30, 31])
    negatives = torch.tensor([[25, 26, 27], [28, 29, 30], [3, 4, 5], [6, 7, 8]])
    weights = torch.tensor([0.5, 1.5, 2.0, 0.0])
    user_emb, song_emb = embed(model, view)
    pos = (user_emb[users] * song_emb[positives]).sum(-1)
    neg = (user_emb[users].unsqueeze(1) * song_emb[negatives]).sum(-1)
    expected = (weights * torch.nn.functional.softplus(neg - pos.unsqueeze(1)).mean(1)).sum() / 4
    model.eval()  # same embeddings as ``embed``
    for micro_batch in (4, 3, 1):
        loss = bpr_step_loss(model, view, users, positives, negatives, weights, micro_batch)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = bpr_step_loss(model, view, users, positives, negatives, None, 4)
    assert unweighted.item() == pytest.approx(
        torch.nn.functional.softplus(neg - pos.unsqueeze(1)).mean().item(), rel=1e-5
    )


def test_unit_weights_train_exactly_like_unweighted_and_skewed_weights_differ():
    view, valid = toy_problem()
    cfg = config(max_epochs=3, patience=100)
    edges = view[LISTENS].edge_index.size(1)
    plain = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    ones = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=torch.ones(edges))
    assert _states_equal(plain.final_state, ones.final_state)
    skew = torch.linspace(0.0, 2.0, edges)
    skewed = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=skew)
    assert not _states_equal(plain.final_state, skewed.final_state)
    with pytest.raises(ValueError, match="one value per training edge"):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=torch.ones(edges - 1))
    with pytest.raises(ValueError, match="non-negative"):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=-torch.ones(edges))


def test_several_negatives_per_positive_are_sampled_in_one_vectorized_call(monkeypatch):
    import spotify_engine_assets.core.training.trainer as training_module

    view, valid = toy_problem()
    cfg = config(max_epochs=2, patience=100, negatives_per_positive=4)
    calls = []
    original = training_module.sample_negatives

    def recording(users, known_keys, num_songs, generator, rounds=20):
        negatives = original(users, known_keys, num_songs, generator, rounds)
        calls.append((users.clone(), negatives.clone()))
        return negatives

    monkeypatch.setattr(training_module, "sample_negatives", recording)
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    edges = view[LISTENS].edge_index.size(1)
    steps = -(-edges // cfg.batch_size)
    assert len(calls) == steps * 2  # one call per optimizer step
    assert sum(users.numel() for users, _ in calls) == 4 * edges * 2
    played = torch.zeros(8, 40, dtype=torch.bool)
    played[view[LISTENS].edge_index[0], view[LISTENS].edge_index[1]] = True
    for users, negatives in calls:
        assert not played[users, negatives].any()
    assert result.history[-1]["loss"] > 0
    other = train(
        build_model(config(max_epochs=2, patience=100), SCHEMA, num_nodes_of(view)),
        view,
        valid,
        config(max_epochs=2, patience=100),
    )
    assert not _states_equal(result.final_state, other.final_state)


def test_gradient_accumulation_is_one_forward_per_step(monkeypatch):
    view, valid = toy_problem()
    edges = view[LISTENS].edge_index.size(1)  # 48
    accumulated = config(batch_size=8, grad_accumulation=3, max_epochs=3, patience=100)
    model = build_model(accumulated, SCHEMA, num_nodes_of(view))
    forwards = []
    original_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(model.training) or original_forward(*a, **k))
    optimizer_steps = []
    original_step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda self, *a, **k: optimizer_steps.append(1) or original_step(self, *a, **k)
    )
    train(model, view, valid, accumulated)
    training_forwards = sum(forwards)  # forward calls in training mode (validation runs in eval mode)
    assert len(optimizer_steps) == -(-edges // 24) * 3  # a step covers 3 micro-batches of 8
    assert training_forwards == len(optimizer_steps)  # one forward pass per optimizer step
    # one validation embedding per epoch, and train() leaves the model prepared (one more)
    assert len(forwards) - training_forwards == 3 + 1


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_step():
    """Summing micro-batch losses from one forward pass gives the same gradient as one big batch
    (whole-run equality is not tested: Adam amplifies float rounding in near-zero gradients)."""
    view, _ = toy_problem()
    cfg = config("gat_enhanced")
    g = torch.Generator().manual_seed(4)
    users = torch.randint(8, (24,), generator=g)
    positives = torch.randint(40, (24,), generator=g)
    negatives = torch.randint(40, (24, 3), generator=g)
    weights = torch.rand(24, generator=g)
    gradients = []
    for micro_batch in (24, 8, 5):
        model = build_model(cfg, SCHEMA, num_nodes_of(view))
        bpr_step_loss(model, view, users, positives, negatives, weights, micro_batch).backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0]
    for other in gradients[1:]:
        assert other.keys() == gradients[0].keys()
        for name, grad in gradients[0].items():
            assert torch.allclose(other[name], grad, atol=1e-7, rtol=1e-5), name


# ---------------------------------------------------------------------------------- checkpoints and resume


class _Crash(Exception):
    pass


def _comparable(result) -> tuple:
    return (
        [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in result.history],
        result.best_epoch,
        result.epochs_run,
    )


@pytest.mark.parametrize("kind", ["gat_enhanced", "lightgcn"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, kind):
    """A run stopped after epoch 3 (its checkpoint written at epoch 2, every 2 epochs) resumes and
    ends exactly like a run never interrupted: weights, history, LR schedule, dropout RNG."""
    view, valid = toy_problem()
    dropout = {"dropout": 0.3} if kind == "gat_enhanced" else {}  # lightgcn has no dropout field
    cfg = config(
        kind,
        **dropout,
        max_epochs=7,
        patience=100,
        lr_patience=0,
        negatives_per_positive=2,
        grad_accumulation=2,
        batch_size=8,
    )
    weights = torch.linspace(0.5, 1.5, view[LISTENS].edge_index.size(1))
    reference = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=weights)
    assert len({h["lr"] for h in reference.history}) > 1  # the scheduler acted: its state matters

    def crash_at_three(row):
        if row["epoch"] == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train(
            build_model(cfg, SCHEMA, num_nodes_of(view)),
            view,
            valid,
            cfg,
            weights=weights,
            checkpoint_dir=tmp_path,
            checkpoint_every=2,
            on_epoch=crash_at_three,
        )
    torch.manual_seed(12345)  # the resumed process's global RNG is whatever: the checkpoint restores it
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    resumed = train(model, view, valid, cfg, weights=weights, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert resumed.resumed_from_epoch == 2
    assert _comparable(resumed) == _comparable(reference)
    assert _states_equal(resumed.final_state, reference.final_state)
    assert _states_equal(resumed.best_state, reference.best_state)
    assert _states_equal(model.state_dict(), reference.best_state)
    # the finished checkpoint is reused as is: nothing retrains
    again = train(
        build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=weights, checkpoint_dir=tmp_path
    )
    assert again.resumed_from_epoch == cfg.max_epochs
    assert _comparable(again) == _comparable(reference)
    assert _states_equal(again.final_state, reference.final_state)


def test_checkpoint_of_another_config_or_data_is_never_resumed(tmp_path):
    view, valid = toy_problem()
    cfg = config(max_epochs=3, patience=100)
    train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, checkpoint_dir=tmp_path)
    messages = []
    other = config(max_epochs=3, patience=100, lr=0.01)
    result = train(
        build_model(other, SCHEMA, num_nodes_of(view)), view, valid, other, checkpoint_dir=tmp_path, log=messages.append
    )
    assert result.resumed_from_epoch == 0 and result.epochs_run == 3
    assert any("another config or data" in m for m in messages)
    other_view, _ = toy_problem(seed=1)
    result = train(build_model(cfg, SCHEMA, num_nodes_of(other_view)), other_view, valid, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 0
    capped = train(
        build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, max_epochs=2, checkpoint_dir=tmp_path
    )
    assert capped.resumed_from_epoch == 0 and capped.epochs_run == 2


def test_checkpoint_is_weights_only_loadable_and_complete(tmp_path):
    view, valid = toy_problem()
    cfg = config(max_epochs=2, patience=100)
    train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, checkpoint_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [CHECKPOINT_FILE]  # written atomically: no temporary file left behind
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "generator",
        "torch_rng",
        "history",
        "best_state",
        "best_epoch",
        "best_valid",
        "epoch",
        "finished",
        "fingerprint",
    } <= set(state)
    assert state["epoch"] == 2 and state["finished"] is True and len(state["history"]) == 2


# ---------------------------------------------------------------------------------- reproducibility


def test_same_config_data_and_seed_give_identical_test_metrics():
    """End to end: train, then rank held-out pairs (never the training pairs) with the library metrics."""
    view, valid = toy_problem(num_users=12, num_songs=60, per_user=8)
    g = torch.Generator().manual_seed(9)
    test_pairs = torch.stack([torch.arange(12), torch.randint(60, (12,), generator=g)])
    known = torch.cat([view[LISTENS].edge_index, valid], dim=1)
    keep = ~torch.isin(test_pairs[0] * 60 + test_pairs[1], known[0] * 60 + known[1])
    test_pairs = test_pairs[:, keep]
    weights = torch.linspace(0.2, 1.8, view[LISTENS].edge_index.size(1))

    def run(seed: int) -> dict:
        cfg = config(
            "gat_enhanced",
            dropout=0.2,
            max_epochs=4,
            patience=100,
            negatives_per_positive=3,
            grad_accumulation=2,
            batch_size=16,
            seed=seed,
        )
        model = build_model(cfg, SCHEMA, num_nodes_of(view))
        train(model, view, valid, cfg, weights=weights)
        user, song = embed(model, view)
        return ranking_metrics(user, song, test_pairs, known, ks=(5, 10))

    first, second = run(0), run(0)
    assert first == second
    assert run(1) != first


# ---------------------------------------------------------------------------------- regularizers


def test_orthogonality_penalty_is_the_mean_squared_cosine_of_distinct_rows():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(30, 8, generator=g)
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    cosine = unit @ unit.t()
    off_diagonal = cosine[~torch.eye(30, dtype=torch.bool)]
    assert orthogonality_penalty(embeddings).item() == pytest.approx(off_diagonal.pow(2).mean().item(), rel=1e-5)
    assert orthogonality_penalty(torch.eye(6) * 3).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_penalty(torch.ones(5, 4)).item() == pytest.approx(1.0, rel=1e-6)
    assert orthogonality_penalty(torch.randn(1, 4)).item() == 0.0


def test_attention_entropy_reads_only_sampled_destinations():
    index = torch.tensor([[0, 1, 2, 0, 1], [0, 0, 0, 1, 2]])  # dst 0: 3 edges, dst 1 and 2: one each
    alpha = torch.tensor([[0.5], [0.25], [0.25], [1.0], [1.0]])
    attention = {"layer0/song__rev_listens__user": (index, alpha), "layer0/user__listens__song": (index, alpha)}
    h0 = -(0.5 * torch.log(torch.tensor(0.5)) + 2 * 0.25 * torch.log(torch.tensor(0.25)))
    only_user0 = attention_entropy(attention, {"user": torch.tensor([0])}, {"user": 3, "song": 3})
    assert only_user0.item() == pytest.approx(h0.item(), rel=1e-5)
    both = attention_entropy(attention, {"user": torch.tensor([0, 1])}, {"user": 3, "song": 3})
    assert both.item() == pytest.approx(h0.item() / 2, rel=1e-5)
    changed = alpha.clone()
    changed[3] = 0.3  # an edge into user 1, not sampled in ``only_user0``
    again = attention_entropy(
        {"layer0/song__rev_listens__user": (index, changed)}, {"user": torch.tensor([0])}, {"user": 3}
    )
    assert again.item() == pytest.approx(h0.item(), rel=1e-5)


def test_regularizers_move_training_in_their_direction():
    """Orthogonality lowers the mean squared cosine between song embeddings; an attention-entropy
    penalty makes the user attention sharper (lower entropy) than plain BPR does."""
    view, valid = toy_problem(num_users=12, num_songs=60, per_user=10)
    base = dict(max_epochs=5, patience=100)
    plain = build_model(config("gat_enhanced", **base), SCHEMA, num_nodes_of(view))
    train(plain, view, valid, config("gat_enhanced", **base))
    ortho_cfg = config("gat_enhanced", orthogonality_weight=5.0, **base)
    ortho = build_model(ortho_cfg, SCHEMA, num_nodes_of(view))
    train(ortho, view, valid, ortho_cfg)
    assert orthogonality_penalty(embed(ortho, view)[1]) < orthogonality_penalty(embed(plain, view)[1])

    entropy_cfg = config("gat_enhanced", attention_entropy_weight=5.0, **base)
    sharp = build_model(entropy_cfg, SCHEMA, num_nodes_of(view))
    train(sharp, view, valid, entropy_cfg)
    everyone = {"user": torch.arange(12), "song": torch.arange(60)}
    sizes = {"user": 12, "song": 60}

    def mean_entropy(model):
        model.eval()
        with torch.no_grad():
            return attention_entropy(model(view, return_attention=True)[2], everyone, sizes).item()

    assert mean_entropy(sharp) < mean_entropy(plain)
