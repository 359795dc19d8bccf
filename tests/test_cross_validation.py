"""Time-series cross-validation: folds by first play (expanding training periods, validation
before the cut, evaluation in the next window, no evaluation edge in the training graph), the
mean ± std summary, every error case, and the ``time_series_cv`` asset on tiny data."""

from __future__ import annotations

import dataclasses
import math
import re

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import ConfigError, ModelConfig, parse_config
from spotify_engine_assets.core.data.graph import heldout_in_view
from spotify_engine_assets.datasets.listening.cross_validation import (
    CV_METRICS,
    DAY,
    CrossValidationError,
    FoldSettings,
    cross_validate,
    fold_leaks,
    mean_std_table,
    summarize,
    time_folds,
)
from spotify_engine_assets.datasets.listening.graph import (
    BY,
    HAS,
    LISTENS,
    SCHEMA,
    add_reverse_edges,
    message_passing_graph,
)
from spotify_engine_assets.runner import run_config

torch.set_num_threads(1)
START = 1_704_067_200.0  # 2024-01-01 00:00 UTC


def timed_graph(
    num_users: int = 20, num_songs: int = 80, per_user: int = 12, days: float = 30.0, seed: int = 0
) -> HeteroData:
    """Each user discovers ``per_user`` distinct songs at random times over ``days``; user 0
    joins only in the last 10 % of the history (a cold user in every fold's training period)."""
    rng = np.random.default_rng(seed)
    users, songs, first = [], [], []
    for user in range(num_users):
        chosen = rng.choice(num_songs - 1, per_user, replace=False)  # the last song is never played...
        low = 0.9 * days if user == 0 else 0.0
        users += [user] * per_user
        songs += chosen.tolist()
        first += (START + rng.uniform(low, days, per_user) * DAY).tolist()
    users.append(1)  # ...except once, by user 1 near the end: a song new in the last window
    songs.append(num_songs - 1)
    first.append(START + (days - 0.5) * DAY)
    n = len(users)
    data = HeteroData()
    for node_type, count in {"user": num_users, "song": num_songs, "artist": 8, "genre": 3}.items():
        data[node_type].num_nodes = count
        data[node_type].node_id = torch.arange(count)
    listens = data[LISTENS]
    listens.edge_index = torch.tensor([users, songs])
    listens.first_played = torch.tensor(first, dtype=torch.float64)
    listens.last_played = listens.first_played + torch.from_numpy(rng.uniform(0, 2 * DAY, n))
    listens.play_count = torch.from_numpy(rng.integers(1, 5, n).astype(np.float32))
    listens.mean_completion = torch.from_numpy(rng.uniform(0.2, 1.0, n).astype(np.float32))
    listens.edge_attr = torch.stack(
        [listens.play_count.log1p(), listens.mean_completion, ((listens.last_played - START) / DAY).float()], dim=1
    )
    all_songs = torch.arange(num_songs)
    data[BY].edge_index = torch.stack([all_songs, all_songs % 8])
    data[HAS].edge_index = torch.stack([all_songs, all_songs % 3])
    return add_reverse_edges(data)


def tiny_config(kind: str, **overrides) -> ModelConfig:
    settings = dict(name=f"cv_{kind}", model=kind)
    if kind != "most_popular":
        settings.update(embedding_dim=8, num_layers=1, batch_size=64, max_epochs=3, patience=5)
    return parse_config({**settings, **overrides})


def test_folds_expand_and_never_let_an_evaluation_edge_into_training():
    data = timed_graph()
    listens = data[LISTENS]
    times = listens.first_played
    folds = time_folds(listens.edge_index, times, FoldSettings(n_folds=3, min_pairs=5))
    assert [f.index for f in folds] == [1, 2, 3]
    span = float(times.max()) + 1 - float(times.min())
    for previous, fold in zip([None, *folds], folds):
        # all training (fit and validation) edges precede the window; evaluation edges lie inside it
        assert float(times[fold.train].max()) < fold.valid_start <= float(times[fold.valid].min())
        assert float(times[fold.valid].max()) < fold.eval_start <= float(times[fold.test].min())
        assert float(times[fold.test].max()) < fold.eval_end
        assert fold.eval_end - fold.eval_start == pytest.approx(span / 4)
        # message passing over the fold's training graph holds no validation or evaluation edge
        view = message_passing_graph(data, fold.train)
        assert view[LISTENS].edge_index.size(1) == fold.train.numel()
        assert heldout_in_view(view, data, SCHEMA, torch.cat([fold.valid, fold.test])) == 0
        assert not set(fold.train.tolist()) & set(fold.test.tolist())
        if previous is not None:  # expanding window: the past fold's training edges stay
            assert set(previous.train.tolist()) < set(fold.train.tolist())
            assert fold.eval_start == pytest.approx(previous.eval_end)
    assert folds[-1].eval_end > float(times.max())  # the last play is evaluated, not lost
    assert fold_leaks(data, folds) == {
        i: {"heldout_edges_in_graph": 0, "training_edges_not_before_window": 0} for i in (1, 2, 3)
    }


def test_fold_leaks_reports_an_evaluation_edge_in_training():
    data = timed_graph()
    listens = data[LISTENS]
    (fold, *_) = time_folds(listens.edge_index, listens.first_played, FoldSettings(n_folds=2, min_pairs=5))
    leaky = dataclasses.replace(fold, train=torch.cat([fold.train, fold.test[:3]]))
    assert fold_leaks(data, [leaky]) == {1: {"heldout_edges_in_graph": 3, "training_edges_not_before_window": 3}}


def test_cold_users_are_left_out_and_new_songs_stay_targets():
    data = timed_graph()
    listens = data[LISTENS]
    folds = time_folds(listens.edge_index, listens.first_played, FoldSettings(n_folds=3, min_pairs=5))
    users, songs = listens.edge_index
    for fold in folds:
        warm = set(users[fold.train].tolist())
        assert 0 not in warm  # user 0 joins after every training period
        assert set(users[fold.test].tolist()) <= warm and set(users[fold.valid].tolist()) <= warm
        in_window = (listens.first_played >= fold.eval_start) & (listens.first_played < fold.eval_end)
        cold = in_window & ~torch.isin(users, torch.tensor(sorted(warm)))
        assert fold.cold_user_pairs == int(cold.sum())
        assert fold.test.numel() + fold.cold_user_pairs == int(in_window.sum())
    assert folds[-1].cold_user_pairs > 0
    last_song = data["song"].num_nodes - 1
    assert last_song in songs[folds[-1].test].tolist() and folds[-1].new_song_pairs >= 1


def test_window_and_validation_lengths_in_days():
    data = timed_graph()
    listens = data[LISTENS]
    folds = time_folds(
        listens.edge_index, listens.first_played, FoldSettings(n_folds=2, window_days=5, valid_days=2, min_pairs=3)
    )
    end = float(listens.first_played.max()) + 1
    assert folds[0].eval_start == pytest.approx(end - 10 * DAY)
    assert folds[1].eval_start - folds[1].valid_start == pytest.approx(2 * DAY)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (FoldSettings(n_folds=1), "n_folds must be an integer >= 2, got 1"),
        (FoldSettings(n_folds=3, window_days=-1.0), "window_days must be a positive number"),
        (FoldSettings(n_folds=3, valid_days=float("nan")), "valid_days must be a positive number"),
        (FoldSettings(n_folds=3, min_pairs=0), "min_pairs must be an integer >= 1"),
        (FoldSettings(n_folds=3, window_days=10.0), "3 x 10.00 + 5.00 days leaves no training period"),
        (FoldSettings(n_folds=3, min_pairs=50), "too few interactions for fold 1"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(settings, message):
    data = timed_graph()
    with pytest.raises(CrossValidationError, match=re.escape(message)):
        time_folds(data[LISTENS].edge_index, data[LISTENS].first_played, settings)


def test_too_few_interactions_names_the_counts():
    data = timed_graph(num_users=4, per_user=5)
    with pytest.raises(CrossValidationError) as error:
        time_folds(data[LISTENS].edge_index, data[LISTENS].first_played, FoldSettings(n_folds=4, min_pairs=3))
    text = str(error.value)
    assert "fold 1" in text and "training" in text and "validation" in text and "need >= 3" in text


def test_summary_mean_and_sample_std_per_config_and_metric():
    rng = np.random.default_rng(1)
    rows = [
        {"config": c, "fold": f, **{m: float(rng.random()) for m in CV_METRICS}} for c in ("a", "b") for f in (1, 2, 3)
    ]
    per_fold = pl.DataFrame(rows)
    summary = summarize(per_fold, 3)
    assert summary.columns == ["config", "metric", "fold_1", "fold_2", "fold_3", "mean", "std"]
    assert summary.height == 2 * len(CV_METRICS)
    for row in summary.iter_rows(named=True):
        values = [r[row["metric"]] for r in rows if r["config"] == row["config"]]
        assert [row["fold_1"], row["fold_2"], row["fold_3"]] == values
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["std"] == pytest.approx(np.std(values, ddof=1))
    table = mean_std_table(summary)
    assert table["config"].to_list() == ["a", "b"] and table.columns[1:] == list(CV_METRICS)
    assert " ± " in table["ndcg@10"][0]


def test_cross_validate_trains_each_config_on_each_fold():
    data = timed_graph()
    configs = [tiny_config("most_popular"), tiny_config("lightgcn")]
    result = cross_validate(data, configs, FoldSettings(n_folds=2, min_pairs=5), max_epochs=2)
    assert result.per_fold.select("config", "fold").rows() == [
        ("cv_most_popular", 1),
        ("cv_most_popular", 2),
        ("cv_lightgcn", 1),
        ("cv_lightgcn", 2),
    ]
    assert result.per_fold.filter(pl.col("config") == "cv_lightgcn")["epochs_run"].to_list() == [2, 2]
    for row in result.per_fold.iter_rows(named=True):
        fold = result.folds[row["fold"] - 1]
        assert row["users_evaluated"] == torch.unique(data[LISTENS].edge_index[0, fold.test]).numel()
        assert all(0.0 <= row[m] <= 1.0 for m in CV_METRICS)
    assert result.summary.height == 2 * len(CV_METRICS)
    assert all(math.isfinite(v) for v in result.summary["std"])


def test_cross_validate_trains_task_heads_and_weighted_configs():
    """Task heads and weighted BPR get their labels and weights from the fold's training edges."""
    data = timed_graph()
    config = tiny_config("lightgcn", task_complete_weight=0.5, task_repeat_weight=0.5, weight_play_count=1.0)
    result = cross_validate(data, [config], FoldSettings(n_folds=2, min_pairs=5), max_epochs=2)
    assert result.per_fold["epochs_run"].to_list() == [2, 2]
    assert all(math.isfinite(row["ndcg@10"]) for row in result.per_fold.iter_rows(named=True))


def test_cross_validate_rejects_a_graph_without_first_play_and_bad_epochs():
    data = timed_graph()
    with pytest.raises(CrossValidationError, match="max_epochs must be >= 1"):
        cross_validate(data, [tiny_config("lightgcn")], FoldSettings(n_folds=2, min_pairs=5), max_epochs=0)
    del data[LISTENS].first_played
    with pytest.raises(CrossValidationError, match="lack 'first_played'"):
        cross_validate(data, [tiny_config("most_popular")], FoldSettings(n_folds=2, min_pairs=5))


# ------------------------------------------------------------------------------ the asset


TIME_SERIES_CV = dg.AssetKey(["listening", "time_series_cv"])


def _cv_config(**settings) -> dict:
    config = run_config()
    config.setdefault("ops", {})["listening__time_series_cv"] = {"config": settings}
    return config


def _failure(result) -> str:
    return " | ".join(
        f"{e.message} {e.step_failure_data.error.message}" for e in result.all_events if e.is_step_failure
    )


def test_time_series_cv_asset_on_tiny_data(tiny_lake_runner):
    lake, run = tiny_lake_runner
    result = run([TIME_SERIES_CV], config=_cv_config(configs=["most_popular", "lightgcn"], n_folds=2, max_epochs=2))
    assert result.success, _failure(result)
    summary = result.output_for_node("listening__time_series_cv")
    assert set(summary["config"]) == {"most_popular", "lightgcn"}
    assert {"fold_1", "fold_2", "mean", "std"} <= set(summary.columns)
    (materialization,) = result.asset_materializations_for_node("listening__time_series_cv")
    metadata = materialization.metadata
    for key in ("summary", "folds", "per_fold", "plot"):
        assert key in metadata, key
    assert metadata["n_folds"].value == 2 and metadata["time_field"].value == "first_played"
    assert "±" in metadata["summary"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "folds_leak_free" and check.passed
    written = pl.read_csv(lake / "reports" / "listening" / "time_series_cv.csv")
    assert written.height == summary.height
    assert "± " in (lake / "reports" / "listening" / "time_series_cv.md").read_text()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_folds": 1}, "n_folds\n  Input should be greater than or equal to 2"),  # the config Field refuses it
        ({"configs": ["most_popular", "no_such_config"]}, "unknown listening model config 'no_such_config'"),
        ({"configs": []}, "no configs to evaluate"),
        ({"n_folds": 6, "min_pairs": 100000}, "too few interactions for fold 1"),
    ],
)
def test_time_series_cv_asset_errors(tiny_lake_runner, settings, message):
    _, run = tiny_lake_runner
    result = run([TIME_SERIES_CV], config=_cv_config(**settings))
    assert not result.success
    assert message in _failure(result)


def test_unknown_config_name_is_a_config_error():
    from spotify_engine_assets.datasets.listening import DATASET

    with pytest.raises(ConfigError, match="unknown listening model config"):
        DATASET.registry.get("no_such_config")
