"""Simple vs advanced trainer (one shared loop), multi-task heads (labels, loss, AUC), the
multi-objective surrogates (diversity, coverage) and their config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from scipy.stats import mannwhitneyu
from test_training import _states_equal, config, toy_problem

import spotify_engine_assets.core.training.trainer as training_module
from spotify_engine_assets.core.config import ConfigError, parse_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.models import TaskHeads, build_model, embed
from spotify_engine_assets.core.training.inputs import task_labels
from spotify_engine_assets.core.training.losses import (
    bpr_step_loss,
    candidate_softmax,
    expected_similarity,
    exposure_entropy,
    objective_penalty,
    roc_auc,
    task_metrics,
)
from spotify_engine_assets.core.training.trainer import AdvancedTrainer, BaseTrainer, SimpleTrainer, train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA

torch.set_num_threads(1)


def labelled_graph(seed: int = 3):
    """The toy view as a full graph with listens columns, and every other edge as training."""
    view, valid = toy_problem()
    data = view.clone()
    g = torch.Generator().manual_seed(seed)
    edges = data[LISTENS].edge_index.size(1)
    data[LISTENS].play_count = torch.randint(1, 4, (edges,), generator=g).float()
    data[LISTENS].mean_completion = torch.rand(edges, generator=g)
    return data, valid


# ---------------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("field", ["task_complete_weight", "task_repeat_weight", "diversity_weight", "coverage_weight"])
def test_negative_objective_weights_fail_naming_the_field(field):
    with pytest.raises(ValidationError, match=field):
        config(**{field: -0.1})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"complete_threshold": 0.5}, "complete_threshold needs task_complete_weight > 0"),
        ({"repeat_min_plays": 3}, "repeat_min_plays needs task_repeat_weight > 0"),
        ({"surrogate_temperature": 0.1}, "surrogate_temperature needs diversity_weight or coverage_weight > 0"),
        ({"surrogate_candidates": 16}, "surrogate_candidates needs diversity_weight or coverage_weight > 0"),
        ({"complete_threshold": 0.0, "task_complete_weight": 1.0}, "complete_threshold"),
        ({"surrogate_temperature": 0.0, "coverage_weight": 1.0}, "surrogate_temperature"),
        ({"trainer": "fancy"}, "trainer"),
    ],
)
def test_invalid_combinations_fail_at_config_validation(overrides, message):
    with pytest.raises(ValidationError, match=message):
        config(**overrides)


@pytest.mark.parametrize(
    "field, value",
    [
        ("task_complete_weight", 1.0),
        ("task_repeat_weight", 1.0),
        ("diversity_weight", 0.1),
        ("coverage_weight", 0.1),
        ("trainer", "simple"),
    ],
)
def test_most_popular_refuses_training_objectives(field, value):
    # a field a kind does not have is refused (pydantic names the field: "Extra inputs are not permitted")
    with pytest.raises(ValidationError, match=rf"{field}\n\s+Extra inputs are not permitted"):
        parse_config(dict(name="mp", model="most_popular", **{field: value}))


def test_registry_file_error_names_file_config_and_field(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("bad:\n  model: lightgcn\n  coverage_weight: -1\n")
    with pytest.raises(ConfigError, match=r"models\.yaml: config 'bad': coverage_weight"):
        DATASET.registry.load(path)


def test_config_tasks_keep_the_weighted_heads_in_order():
    assert config().tasks == {}
    assert config(task_repeat_weight=0.3).tasks == {"repeat": 0.3}
    assert config(task_repeat_weight=0.3, task_complete_weight=2.0).tasks == {"complete": 2.0, "repeat": 0.3}


# ---------------------------------------------------------------------------------- task labels and heads


def test_task_labels_follow_thresholds_and_read_only_the_given_edges():
    data, _ = labelled_graph()
    listens = data[LISTENS]
    index = torch.arange(0, listens.edge_index.size(1), 2)
    cfg = config(task_complete_weight=1.0, task_repeat_weight=1.0, complete_threshold=0.6, repeat_min_plays=3)
    labels = task_labels(cfg, data, SCHEMA, index)
    assert labels.shape == (index.numel(), 2)
    assert torch.equal(labels[:, 0], (listens.mean_completion[index] >= 0.6).float())
    assert torch.equal(labels[:, 1], (listens.play_count[index] >= 3).float())
    held_out = torch.arange(1, listens.edge_index.size(1), 2)
    listens.mean_completion[held_out] = 1.0 - listens.mean_completion[held_out]
    listens.play_count[held_out] = 99.0
    assert torch.equal(task_labels(cfg, data, SCHEMA, index), labels)
    assert task_labels(config(), data, SCHEMA, index) is None


def test_task_head_on_a_graph_without_the_column_fails_naming_config_and_field():
    data, _ = labelled_graph()
    del data[LISTENS].play_count
    index = torch.arange(10)
    with pytest.raises(ValueError, match=r"'toy_gat_basic'.*task_repeat_weight needs listens\.play_count"):
        task_labels(config(task_repeat_weight=1.0), data, SCHEMA, index)
    assert task_labels(config(task_complete_weight=1.0), data, SCHEMA, index).shape == (10, 1)


@pytest.mark.parametrize("kind", ["gat_enhanced", "lightgcn"])
def test_heads_are_built_only_when_weighted_and_leave_the_model_unchanged(kind):
    view, _ = toy_problem()
    plain = build_model(config(kind), SCHEMA, num_nodes_of(view))
    headed = build_model(config(kind, task_repeat_weight=1.0), SCHEMA, num_nodes_of(view))
    assert not hasattr(plain, "task_heads")
    assert isinstance(headed.task_heads, TaskHeads) and headed.task_heads.tasks == ("repeat",)
    heads = {k: v for k, v in headed.state_dict().items() if k.startswith("task_heads.")}
    rest = {k: v for k, v in headed.state_dict().items() if not k.startswith("task_heads.")}
    assert heads and _states_equal(rest, plain.state_dict())
    # a rebuilt model restores the heads from the state dict (what core.models.load_model does)
    rebuilt = build_model(config(kind, task_repeat_weight=1.0, seed=5), SCHEMA, num_nodes_of(view))
    rebuilt.load_state_dict(headed.state_dict())
    user, song = embed(headed, view)
    pairs = view[LISTENS].edge_index
    with torch.no_grad():
        assert torch.equal(
            headed.task_heads(user, song, pairs[0], pairs[1]), rebuilt.task_heads(user, song, pairs[0], pairs[1])
        )


def test_step_loss_adds_the_weighted_bce_of_the_step_pairs():
    view, _ = toy_problem()
    cfg = config("gat_enhanced", task_complete_weight=0.7, task_repeat_weight=0.2)
    model = build_model(cfg, SCHEMA, num_nodes_of(view)).eval()
    users, positives = torch.tensor([0, 1, 5, 7]), torch.tensor([1, 2, 30, 31])
    negatives = torch.tensor([[25], [26], [3], [4]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    plain = bpr_step_loss(model, view, users, positives, negatives, None, 4, config("gat_enhanced"))
    user, song = embed(model, view)
    with torch.no_grad():
        bce = F.binary_cross_entropy_with_logits(
            model.task_heads(user, song, users, positives), labels, reduction="none"
        ).mean(0)
    expected = plain + 0.7 * bce[0] + 0.2 * bce[1]
    got = bpr_step_loss(model, view, users, positives, negatives, None, 4, cfg, labels=labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="task heads need labels"):
        bpr_step_loss(model, view, users, positives, negatives, None, 4, cfg)


def test_trainer_needs_labels_exactly_when_the_config_has_heads():
    view, valid = toy_problem()
    cfg = config(task_complete_weight=1.0, max_epochs=1)
    edges = view[LISTENS].edge_index.size(1)
    with pytest.raises(ValueError, match=r"trains task heads \['complete'\]: pass task_labels of shape \(48, 1\)"):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    with pytest.raises(ValueError, match="has no task head"):
        train(
            build_model(config(), SCHEMA, num_nodes_of(view)), view, valid, config(), task_labels=torch.ones(edges, 1)
        )
    with pytest.raises(ValueError, match="the model has no task heads"):
        train(build_model(config(), SCHEMA, num_nodes_of(view)), view, valid, cfg, task_labels=torch.ones(edges, 1))


def test_heads_learn_their_labels_jointly_with_ranking():
    """Labels that depend on the song's taste cluster: after joint training the head ranks the
    training pairs by label far better than chance, and ranking is still learned."""
    view, valid = toy_problem(num_users=16, num_songs=60, per_user=8)
    data = view.clone()
    pairs = data[LISTENS].edge_index
    data[LISTENS].play_count = torch.where(pairs[1] % 2 == 0, 3.0, 1.0)  # even songs get repeated
    data[LISTENS].mean_completion = torch.full((pairs.size(1),), 0.5)
    data[LISTENS].mean_completion[:2] = 0.9
    cfg = config("lightgcn", task_repeat_weight=1.0, max_epochs=15, patience=100, batch_size=16)
    every = torch.arange(pairs.size(1))
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    labels = task_labels(cfg, data, SCHEMA, every)
    assert task_metrics(model.prepare(view), cfg, labels, pairs[:, every])["repeat"]["auc"] < 0.8  # untrained
    result = train(model, view, valid, cfg, task_labels=labels)
    metrics = task_metrics(model, cfg, labels, pairs[:, every])  # train() leaves the model prepared
    assert metrics["repeat"]["auc"] > 0.8, metrics
    assert metrics["repeat"]["positive_rate"] == pytest.approx(float((pairs[1] % 2 == 0).float().mean()))
    assert result.best_valid > 0


def test_roc_auc_matches_scipy_mann_whitney_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (300,), generator=g).float()  # many ties
    labels = (torch.rand(300, generator=g) < 0.3 + 0.08 * scores).float()
    expected = mannwhitneyu(scores[labels == 1].numpy(), scores[labels == 0].numpy()).statistic / (
        int(labels.sum()) * int((1 - labels).sum())
    )
    assert roc_auc(scores, labels) == pytest.approx(expected, rel=1e-12)
    assert roc_auc(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0, 1, 1])) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    assert roc_auc(torch.tensor([0.3, 0.4]), torch.tensor([1, 1])) is None
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        roc_auc(torch.rand(3), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------- multi-objective surrogates


def test_surrogates_equal_their_brute_force_definitions():
    g = torch.Generator().manual_seed(1)
    user_emb, song_emb = torch.randn(6, 5, generator=g), torch.randn(30, 5, generator=g)
    users, candidates = torch.tensor([0, 2, 5]), torch.tensor([3, 7, 11, 12, 20, 29])
    probs = candidate_softmax(user_emb, song_emb, users, candidates, 0.7)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    exposure = probs.mean(0)
    assert exposure_entropy(probs).item() == pytest.approx(
        (-(exposure * exposure.log()).sum() / math.log(6)).item(), rel=1e-5
    )
    unit = F.normalize(song_emb[candidates], dim=1)
    cosine = unit @ unit.t()
    brute = torch.stack([p @ cosine @ p for p in probs]).mean()
    assert expected_similarity(probs, song_emb[candidates]).item() == pytest.approx(brute.item(), rel=1e-5)
    uniform = torch.full((2, 6), 1 / 6)
    assert exposure_entropy(uniform).item() == pytest.approx(1.0)


@pytest.mark.parametrize("objective", ["coverage", "diversity"])
def test_a_gradient_step_on_a_surrogate_moves_it_in_the_intended_direction(objective):
    view, _ = toy_problem(num_users=12, num_songs=60, per_user=8)
    cfg = config(
        "lightgcn",
        coverage_weight=1.0 if objective == "coverage" else 0.0,
        diversity_weight=1.0 if objective == "diversity" else 0.0,
        surrogate_candidates=32,
        surrogate_temperature=0.2,
    )
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    users, candidates = torch.arange(12), torch.randperm(60, generator=torch.Generator().manual_seed(2))[:32]

    def measured():
        user, song = embed(model, view)
        probs = candidate_softmax(user, song, users, candidates, cfg.surrogate_temperature)
        return (
            exposure_entropy(probs).item()
            if objective == "coverage"
            else expected_similarity(probs, song[candidates]).item()
        )

    before = measured()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        user, song = model(view)
        penalty = objective_penalty(user, song, users, candidates, cfg)
        assert torch.isfinite(penalty)
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    after = measured()
    assert (after > before) if objective == "coverage" else (after < before), (before, after)


def test_zero_weight_surrogates_are_a_no_op_and_weighted_ones_change_training():
    view, valid = toy_problem()
    base = dict(max_epochs=3, patience=100, batch_size=16)
    plain = train(build_model(config(**base), SCHEMA, num_nodes_of(view)), view, valid, config(**base))
    explicit = config(diversity_weight=0.0, coverage_weight=0.0, **base)
    zero = train(build_model(explicit, SCHEMA, num_nodes_of(view)), view, valid, explicit)
    assert _states_equal(plain.final_state, zero.final_state)
    covered = config(coverage_weight=1.0, surrogate_candidates=16, **base)
    result = train(build_model(covered, SCHEMA, num_nodes_of(view)), view, valid, covered)
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert not _states_equal(plain.final_state, result.final_state)


def test_more_candidates_than_songs_fail_before_training():
    view, valid = toy_problem()  # 40 songs
    cfg = config(diversity_weight=0.1, surrogate_candidates=41)
    with pytest.raises(ValueError, match="surrogate_candidates 41 exceeds the catalogue's 40 songs"):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)


# ---------------------------------------------------------------------------------- trainers


def test_simple_trainer_runs_every_epoch_without_validation(monkeypatch):
    view, valid = toy_problem()
    cfg = config(trainer="simple", max_epochs=6, patience=1)  # patience is an advanced-trainer setting
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    eval_forwards = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: eval_forwards.append(not model.training) or original(*a, **k))
    monkeypatch.setattr(training_module, "validate", lambda *a, **k: pytest.fail("the simple trainer validated"))
    result = train(model, view, valid, cfg)
    # no validation forward: the one evaluation-mode pass is train() preparing the model to score
    assert result.epochs_run == 6 and sum(eval_forwards) == 1
    assert all(
        set(row) == {"epoch", "loss", "lr", "seconds", "train_seconds", "user_seconds", "sys_seconds"}
        for row in result.history
    )
    assert {row["lr"] for row in result.history} == {cfg.lr}
    assert result.best_valid is None and result.best_epoch == 6
    assert _states_equal(result.best_state, result.final_state) and _states_equal(
        model.state_dict(), result.final_state
    )
    from spotify_engine_assets.core.plots import training_curve

    assert "training curve" in training_curve(result.history, cfg.name)  # trained_model's plot: loss only


def test_both_trainers_share_one_loop():
    """Same config and seed, no LR change and no early stop: the advanced trainer's final weights
    equal the simple trainer's (validation only reads the model)."""
    view, valid = toy_problem()
    settings = dict(
        max_epochs=4,
        patience=100,
        lr_patience=100,
        negatives_per_positive=2,
        task_complete_weight=0.5,
        coverage_weight=0.2,
        surrogate_candidates=16,
    )
    data, _ = labelled_graph()
    labels = task_labels(config(**settings), data, SCHEMA, torch.arange(view[LISTENS].edge_index.size(1)))
    runs = {}
    for trainer in ("simple", "advanced"):
        cfg = config(trainer=trainer, **settings)
        runs[trainer] = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, task_labels=labels)
    assert _states_equal(runs["simple"].final_state, runs["advanced"].final_state)
    assert [r["loss"] for r in runs["simple"].history] == [r["loss"] for r in runs["advanced"].history]
    assert all("valid_recall@10" in row for row in runs["advanced"].history)


def test_advanced_trainer_early_stops_and_restores_the_best_weights():
    view, valid = toy_problem(num_users=4, num_songs=10, per_user=3)  # recall@10 is 1.0 from epoch 1
    cfg = config(max_epochs=20, patience=3)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    result = AdvancedTrainer(model, view, cfg, valid).fit()
    assert result.best_epoch == 1 and result.epochs_run == 4
    assert _states_equal(model.state_dict(), result.best_state)
    simple = SimpleTrainer(build_model(cfg, SCHEMA, num_nodes_of(view)), view, cfg).fit()
    assert simple.epochs_run == 20


def test_simple_trainer_refuses_checkpoints(tmp_path):
    view, valid = toy_problem()
    cfg = config(trainer="simple", max_epochs=1)
    with pytest.raises(ValueError, match="the simple trainer writes no checkpoints"):
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        AdvancedTrainer(build_model(config(), SCHEMA, num_nodes_of(view)), view, config(), valid, checkpoint_every=0)


# ---------------------------------------------------------------------------------- steps per epoch


def test_steps_per_epoch_validation():
    assert config().steps_per_epoch is None
    with pytest.raises(ValidationError, match="steps_per_epoch"):
        config(batch_size=4096, steps_per_epoch=0)
    with pytest.raises(
        ValidationError, match="steps_per_epoch 4 sizes each optimizer step itself; remove batch_size 16"
    ):
        config(steps_per_epoch=4)  # the toy config's batch_size is 16, not the default
    with pytest.raises(ValidationError, match="remove grad_accumulation 2"):
        config(batch_size=4096, grad_accumulation=2, steps_per_epoch=4)
    with pytest.raises(ValidationError, match=r"steps_per_epoch\n\s+Extra inputs are not permitted"):
        parse_config(dict(name="pop", model="most_popular", steps_per_epoch=4))
    cfg = config(batch_size=4096, steps_per_epoch=5)
    assert (cfg.positives_per_step(48), cfg.steps_in_epoch(48)) == (10, 5)
    assert (cfg.positives_per_step(3), cfg.steps_in_epoch(3)) == (1, 3)  # never an empty step
    assert (config().positives_per_step(48), config().steps_in_epoch(48)) == (16, 3)


def test_epochs_are_a_fixed_number_of_steps_unless_a_config_sizes_its_steps():
    """Linear epochs by default: 16 full-graph steps over every training unit; naming batch_size or
    grad_accumulation (and not steps_per_epoch) gives fixed-size steps; a dump parses back the same."""
    default = parse_config(dict(name="g", model="lightgcn"))
    assert default.steps_per_epoch == 16 and default.steps_in_epoch(100_000) == 16
    assert default.steps_in_epoch(1_000_000) == 16  # ten times the edges, the same step count
    for sized in (dict(batch_size=1024), dict(grad_accumulation=2)):
        assert parse_config(dict(name="g", model="lightgcn", **sized)).steps_per_epoch is None
    softmax = parse_config(dict(name="g", model="lightgcn", loss="softmax", steps_per_epoch=8))
    assert softmax.steps_in_epoch(1892) == 8 and softmax.positives_per_step(1892) == 237
    for cfg in (default, softmax, parse_config(dict(name="g", model="lightgcn", batch_size=1024))):
        assert parse_config(cfg.model_dump()) == cfg


def test_softmax_epoch_of_k_steps_covers_every_user_once(monkeypatch):
    view, valid = toy_problem()
    cfg = config(loss="softmax", batch_size=4096, steps_per_epoch=3, max_epochs=1)
    seen = []
    original = BaseTrainer._softmax_step
    monkeypatch.setattr(
        BaseTrainer, "_softmax_step", lambda self, users: seen.append(users.clone()) or original(self, users)
    )
    train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    users = torch.unique(view[LISTENS].edge_index[0])
    assert len(seen) == 3 and torch.equal(torch.sort(torch.cat(seen)).values, users)


@pytest.mark.parametrize("steps, sizes", [(5, [10, 10, 10, 9, 9]), (1, [48]), (100, [1] * 48)])
def test_an_epoch_of_k_steps_takes_k_optimizer_steps_over_every_training_edge_once(monkeypatch, steps, sizes):
    view, valid = toy_problem()  # 48 training edges
    assert view[LISTENS].edge_index.size(1) == 48
    cfg = config(batch_size=4096, steps_per_epoch=steps, max_epochs=1)
    trainer = AdvancedTrainer(build_model(cfg, SCHEMA, num_nodes_of(view)), view, cfg, valid)
    batches, optimizer_steps = [], []
    original_step, original_optimizer_step = trainer._bpr_step, trainer.optimizer.step
    monkeypatch.setattr(trainer, "_bpr_step", lambda batch: batches.append(batch.clone()) or original_step(batch))
    monkeypatch.setattr(
        trainer.optimizer, "step", lambda *a, **k: optimizer_steps.append(1) or original_optimizer_step(*a, **k)
    )
    trainer.fit()
    assert len(optimizer_steps) == min(steps, 48)
    assert [b.numel() for b in batches] == sizes
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(48))  # every edge once


def test_steps_per_epoch_with_whole_batches_reproduces_the_batch_size_run():
    """48 edges: 3 steps of 16 are exactly batch_size 16 (same shuffles, negatives, losses)."""
    view, valid = toy_problem()
    runs = [
        train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
        for cfg in (config(max_epochs=3), config(max_epochs=3, batch_size=4096, steps_per_epoch=3))
    ]
    assert _states_equal(runs[0].final_state, runs[1].final_state)
    assert [r["loss"] for r in runs[0].history] == [r["loss"] for r in runs[1].history]
    # 2 steps of 24 positives is another (valid) run
    other = config(max_epochs=3, batch_size=4096, steps_per_epoch=2)
    assert not _states_equal(
        runs[0].final_state, train(build_model(other, SCHEMA, num_nodes_of(view)), view, valid, other).final_state
    )


def test_steps_per_epoch_run_resumes_from_its_checkpoint(tmp_path):
    view, valid = toy_problem()
    cfg = config("lightgcn", batch_size=4096, steps_per_epoch=4, max_epochs=5, patience=100)
    uninterrupted = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, checkpoint_dir=tmp_path / "a")

    def stop_at_3(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            build_model(cfg, SCHEMA, num_nodes_of(view)),
            view,
            valid,
            cfg,
            checkpoint_dir=tmp_path / "b",
            on_epoch=stop_at_3,
        )
    resumed = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    assert _states_equal(resumed.final_state, uninterrupted.final_state)
    strip = lambda history: [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(uninterrupted.history)


def test_trial_budget_counts_steps_per_epoch():
    from spotify_engine_assets.core.experiments.trial_budget import GraphSize, estimate, work_units

    view, _ = toy_problem()
    small = GraphSize.of(view, SCHEMA)
    big = GraphSize(
        num_nodes=small.num_nodes, num_edges={e: 1000 * n for e, n in small.num_edges.items()}, schema=SCHEMA
    )
    fixed = config(batch_size=4096, steps_per_epoch=4)
    per_step = config(batch_size=4096)
    model = build_model(fixed, SCHEMA, small.num_nodes)  # the same model (relations, node types) for both configs
    # 4 steps whatever the edges: the work of a step (one full-graph pass) grows with the edges,
    # so an epoch's work grows about linearly; with fixed 4096-positive steps the step count grows too
    linear = work_units(fixed, big, model, 1) / work_units(fixed, small, model, 1)
    quadratic = work_units(per_step, big, model, 1) / work_units(per_step, small, model, 1)
    assert quadratic > 5 * linear
    batch_bytes = [estimate(c, big, model=model).memory_parts["batch"] for c in (fixed, per_step)]
    assert batch_bytes[0] / batch_bytes[1] == pytest.approx(12_000 / 4096, rel=1e-6)  # the step's gathered embeddings
    # the estimate's step count is the trainer's
    assert fixed.steps_in_epoch(big.train_pairs) == 4 and fixed.positives_per_step(big.train_pairs) == 12_000


def test_validation_ranks_a_seeded_capped_sample_of_validation_users():
    from spotify_engine_assets.core.training.trainer import validation_users

    pairs = torch.stack([torch.arange(100).repeat(2), torch.arange(200) % 7])
    capped = parse_config(dict(name="g", model="lightgcn", valid_users=30))
    sample = validation_users(pairs, capped)
    assert sample.numel() == 30 and torch.equal(sample, torch.unique(sample))
    assert torch.equal(sample, validation_users(pairs, capped))  # seeded
    assert validation_users(pairs, parse_config(dict(name="g", model="lightgcn", valid_users=None))) is None
    assert validation_users(pairs, parse_config(dict(name="g", model="lightgcn", valid_users=100))) is None  # all fit
    within = torch.arange(0, 100, 2)
    assert torch.isin(validation_users(pairs, capped, within), within).all()


# ---------------------------------------------------------------------------------- sampled neighbourhoods


def test_neighbor_fanouts_are_checked_against_the_model():
    base = dict(name="g", model="lightgcn", num_layers=2)
    assert parse_config(dict(base, neighbor_fanouts=[10, -1])).steps_per_epoch is None  # batch_size steps
    for bad, message in (
        ([10], "1 fanouts for 2 layers"),
        ([0, 5], "fanouts must be >= 1 or -1"),
        ([5, 5], "set steps_per_epoch: null"),
    ):
        extra = {"steps_per_epoch": 16} if message.startswith("set") else {}
        with pytest.raises(ValidationError, match=message):
            parse_config(dict(base, neighbor_fanouts=bad, **extra))
    with pytest.raises(ValidationError, match="diversity_weight need the full graph"):
        parse_config(dict(base, neighbor_fanouts=[5, 5], diversity_weight=0.1))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse_config(dict(name="g", model="gat_enhanced", neighbor_fanouts=[5, 5]))


def test_sampled_step_with_every_neighbour_is_the_full_graph_step():
    """Fanouts of -1 keep every neighbour: the sampled BPR loss equals the full-graph one."""
    from spotify_engine_assets.core.training.losses import bpr_step_loss, sampled_bpr_loss

    view, _ = toy_problem()
    cfg = config("lightgcn", neighbor_fanouts=[-1, -1])
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    pairs = view[LISTENS].edge_index
    users, positives, negatives = (
        pairs[0, :12],
        pairs[1, :12],
        torch.randint(40, (12, 2), generator=torch.Generator().manual_seed(1)),
    )
    full = bpr_step_loss(model, view, users, positives, negatives, None, micro_batch=4096)
    sampled = sampled_bpr_loss(model, view, users, positives, negatives, None, cfg.neighbor_fanouts, torch.Generator())
    assert torch.allclose(full, sampled, atol=1e-6)


def test_sampled_training_learns_the_taste_clusters():
    view, valid = toy_problem()
    cfg = config("lightgcn", neighbor_fanouts=[3, 3], max_epochs=25, patience=25)
    result = train(build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg)
    first, best = result.history[0]["valid_recall@10"], result.best_valid
    assert result.epochs_run == 25 and best > first and best >= 0.5
