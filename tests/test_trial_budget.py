"""Resource estimates of a training run (core/experiments/trial_budget.py) against measured peaks, and the
study's limits: a trial whose estimate is over a limit is pruned before it trains."""

from __future__ import annotations

import gc
import time

import optuna
import pytest
import torch
from test_hpo_asset import toy_graph

import spotify_engine_assets.core.training.trainer as trainer_module
from spotify_engine_assets.core.config import update_config
from spotify_engine_assets.core.data.graph import from_payload, num_nodes_of
from spotify_engine_assets.core.evaluation.report import PeakMemory
from spotify_engine_assets.core.experiments import hpo, trial_budget
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, message_passing_graph

torch.set_num_threads(1)

FACTOR = 3.0  # the estimate must bound the measured peak: measured <= estimate <= FACTOR x measured


@pytest.fixture(scope="module")
def graph():
    """~11k training pairs: large enough that the peak is tens of MiB, well above RSS noise."""
    payload, splits = toy_graph(num_users=400, num_songs=2000, per_user=40)
    data = from_payload(payload)
    split = splits["random"]
    view = message_passing_graph(data, split["train"])
    return view, data[LISTENS].edge_index[:, split["valid"]], data, split


def _config(name: str, **changes):
    return update_config(DATASET.registry.base[name], **changes)


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("lightgcn", {}),
        ("gat_basic", {"embedding_dim": 128, "heads": 8}),
        ("gat_enhanced", {"embedding_dim": 32, "num_layers": 2, "heads": 2}),
    ],
)
def test_memory_estimate_bounds_the_measured_peak(graph, name, changes):
    view, valid = graph[:2]
    config = _config(name, **changes)
    gc.collect()
    with PeakMemory() as memory:
        model = build_model(config, SCHEMA, num_nodes_of(view))
        train(model, view, valid, config, max_epochs=1)
    if memory.peak_bytes is None:
        pytest.skip("peak resident memory is measured on Linux only")
    estimate = trial_budget.estimate(config, trial_budget.GraphSize.of(view, SCHEMA), epochs=1)
    ratio = estimate.memory_bytes / memory.peak_bytes
    assert 1.0 <= ratio <= FACTOR, (
        f"{name} {changes}: estimate {estimate.memory_mb:.1f} MiB vs measured {memory.peak_bytes / 2**20:.1f} MiB "
        f"(parts {estimate.memory_parts})"
    )


def test_estimates_grow_with_the_config(graph):
    size = trial_budget.GraphSize.of(graph[0], SCHEMA)
    small = trial_budget.estimate(_config("gat_enhanced", embedding_dim=32, heads=1), size, epochs=2)
    wide = trial_budget.estimate(_config("gat_enhanced", embedding_dim=32, heads=4), size, epochs=2)
    deep = trial_budget.estimate(_config("gat_enhanced", embedding_dim=32, heads=1, num_layers=4), size, epochs=2)
    longer = trial_budget.estimate(_config("gat_enhanced", embedding_dim=32, heads=1), size, epochs=4)
    assert small.memory_bytes < wide.memory_bytes and small.memory_bytes < deep.memory_bytes
    assert longer.memory_bytes == small.memory_bytes and longer.work_units == pytest.approx(2 * small.work_units)
    with pytest.raises(ValueError, match="most_popular does not train"):
        trial_budget.estimate(DATASET.registry.base["most_popular"], size)


def test_time_estimate_from_a_probe_is_the_right_order(graph):
    """Calibrated on the base config, the estimate of another config is within 4x of its run."""
    view, valid, data, split = graph
    per_unit = trial_budget.calibrate_seconds(DATASET, _config("lightgcn", embedding_dim=32), data, split)
    config = _config("lightgcn", embedding_dim=64, num_layers=2)
    started = time.perf_counter()
    train(build_model(config, SCHEMA, num_nodes_of(view)), view, valid, config, max_epochs=2)
    measured = time.perf_counter() - started
    size = trial_budget.GraphSize.of(view, SCHEMA)
    estimated = trial_budget.estimate(config, size, epochs=2, seconds_per_unit=per_unit).seconds
    assert measured / 4 <= estimated <= 4 * measured, (estimated, measured)


def _run(graph, limits, monkeypatch, n_trials=3):
    data, split = graph[2:]

    def never(*args, **kwargs):
        raise AssertionError("a trial over the limit must not train")

    monkeypatch.setattr(trainer_module, "train", never)  # what a graph model's fit trains with
    study = hpo.open_study(DATASET, "lightgcn", optuna.storages.InMemoryStorage(), study_name="limits")
    hpo.run_study(
        study,
        hpo.get_space(DATASET, "lightgcn"),
        hpo.StudyData(DATASET, data, split),
        n_trials,
        max_epochs=2,
        limits=limits,
    )
    return study


def test_trial_over_the_memory_limit_is_pruned_before_training(graph, monkeypatch):
    study = _run(graph, hpo.TrialLimits(max_memory_mb=1.0), monkeypatch)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    for trial in trials:
        reason = trial.user_attrs["pruned_by"]
        assert reason.startswith("memory estimate ") and "> limit max_trial_memory_mb 1 MB" in reason
        assert f"{trial.user_attrs['estimate_memory_mb']:.0f} MB" in reason and trial.user_attrs["epochs_run"] == 0
    rows = hpo.trials_table(study)
    assert all(row["pruned_by"].startswith("memory estimate") and row["est_memory_mb"] > 1.0 for row in rows)


def test_trial_over_the_time_limit_is_pruned_before_training(graph, monkeypatch):
    study = _run(graph, hpo.TrialLimits(max_seconds=1e-3, seconds_per_unit=1e-9), monkeypatch, n_trials=2)
    for trial in study.get_trials(deepcopy=False):
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert (
            trial.user_attrs["pruned_by"].startswith("time estimate ")
            and "max_trial_seconds 0.001 s" in trial.user_attrs["pruned_by"]
        )
        assert trial.user_attrs["estimate_seconds"] > 1e-3


def test_trials_within_the_limits_train(graph):
    study = hpo.open_study(DATASET, "lightgcn", optuna.storages.InMemoryStorage(), study_name="fits")
    data, split = graph[2:]
    study_data = hpo.StudyData(DATASET, data, split)
    hpo.run_study(
        study,
        hpo.get_space(DATASET, "lightgcn"),
        study_data,
        1,
        max_epochs=1,
        limits=hpo.TrialLimits(max_memory_mb=100_000),
    )
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.COMPLETE and "pruned_by" not in trial.user_attrs
    assert trial.user_attrs["estimate_memory_mb"] > 0


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_memory_mb": 0}, "max_memory_mb must be > 0"),
        ({"max_seconds": -1, "seconds_per_unit": 1e-9}, "max_seconds must be > 0"),
        ({"max_seconds": 10}, "max_seconds needs seconds_per_unit"),
    ],
)
def test_bad_limits(limits, message):
    with pytest.raises(hpo.HpoError, match=message):
        hpo.TrialLimits(**limits)
