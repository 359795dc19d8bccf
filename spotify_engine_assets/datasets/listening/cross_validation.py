"""Time-series cross-validation: expanding-window folds over the listens edges, trained and
evaluated per fold, summarised as mean ± standard deviation per metric and config.

**Time axis: first play.** A listens edge is one (user, song) pair, aggregated over all its plays;
it is placed in time by ``first_played``, the moment the user discovered the song. At a cut ``c``
the pairs with ``first_played < c`` are exactly the interactions that existed then, and a pair
first played in the evaluation window is a song the user had never heard before: the next
discoveries are what a recommender must predict. (``last_played`` would put a pair known long
before the cut into the future only because it was replayed, and drop it from the past.)

**Folds.** The history ``[t_min, t_max]`` ends with ``n_folds`` consecutive evaluation windows of
``window_days`` (default: the history split into ``n_folds + 1`` equal parts, so the first fold
trains on the first part). Fold ``i`` (1-based) with evaluation window ``[e_i, e_i + window)``:

* fit (message passing and BPR): pairs first played before ``e_i - valid_days``;
* validation (early stopping only): pairs first played in ``[e_i - valid_days, e_i)``, the tail
  of the training period, never the evaluation window (default ``valid_days`` = half a window);
* evaluation: pairs first played in ``[e_i, e_i + window)``, ranking every song with the user's
  fit and validation songs masked.

Training periods expand: each fold's fit edges contain the previous fold's. Message passing sees
only the fold's fit edges (plus the catalogue: song-artist and song-genre edges).

**Cold users and new songs.** Every user and song keeps its node in every fold. A user with no
fit edge in a fold has only an untrained embedding, so their validation and evaluation pairs are
left out of that fold (counted as ``cold_user_pairs``); the metrics are over users with training
history. Songs first heard by anyone inside the window stay evaluation targets (counted as
``new_song_pairs``): models reach them through the catalogue edges or not at all.

**Caveat.** The edge *attributes* (play count, mean completion, last play) are aggregates over the
whole log, as in the listening graph, so for models that read them (``gat_enhanced``'s attention,
weighted BPR) a training edge's strength includes replays after the cut. Which songs a user
discovers next is never visible.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import polars as pl
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ...core.config import ModelConfig
from ...core.data.graph import heldout_in_view
from ...core.evaluation.metrics import link_prediction_metrics
from ...core.plots import figure_markdown
from ...core.training.trainer import Logger
from .graph import LISTENS, SCHEMA, message_passing_graph

TIME_FIELD = "first_played"
DAY = 86400.0
CV_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "precision@10", "hit_rate@10", "coverage@10")


class CrossValidationError(ValueError):
    """Invalid fold settings, or too few interactions for the folds."""


@dataclass(frozen=True)
class FoldSettings:
    """How the history is cut into folds (times in days)."""

    n_folds: int = 3
    window_days: float | None = None
    valid_days: float | None = None
    min_pairs: int = 10

    def validate(self) -> None:
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise CrossValidationError(f"n_folds must be an integer >= 2, got {self.n_folds!r}")
        for name in ("window_days", "valid_days"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CrossValidationError(f"{name} must be a positive number of days (or unset), got {value!r}")
        if isinstance(self.min_pairs, bool) or not isinstance(self.min_pairs, int) or self.min_pairs < 1:
            raise CrossValidationError(f"min_pairs must be an integer >= 1, got {self.min_pairs!r}")


@dataclass(frozen=True)
class TimeFold:
    """One fold: indices into the listens edges and its time boundaries (seconds since the epoch)."""

    index: int
    valid_start: float
    eval_start: float
    eval_end: float
    train: Tensor
    valid: Tensor
    test: Tensor
    cold_user_pairs: int
    new_song_pairs: int

    def summary(self) -> dict:
        return {
            "fold": self.index,
            "fit_until": _date(self.valid_start),
            "eval_from": _date(self.eval_start),
            "eval_until": _date(self.eval_end),
            "train_pairs": int(self.train.numel()),
            "valid_pairs": int(self.valid.numel()),
            "eval_pairs": int(self.test.numel()),
            "cold_user_pairs": self.cold_user_pairs,
            "new_song_pairs": self.new_song_pairs,
        }


def _date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")


def time_folds(edge_index: Tensor, times: Tensor, settings: FoldSettings) -> list[TimeFold]:
    """Expanding-window folds over interactions ``edge_index`` (``[2, E]`` user, song) placed in
    time by ``times`` (``[E]`` seconds; the first play of each pair).

    Raises:
        CrossValidationError: invalid settings, windows longer than the history, or a fold with
            fewer than ``min_pairs`` training, validation or evaluation interactions (the
            message names the fold, its window and every count).
    """
    settings.validate()
    if times.numel() != edge_index.size(1):
        raise CrossValidationError(f"{times.numel()} times for {edge_index.size(1)} interactions")
    if times.numel() == 0:
        raise CrossValidationError("no interactions to cut into folds")
    times = times.double()
    start, end = float(times.min()), float(times.max()) + 1.0  # the last window includes the last play
    span = end - start
    window = settings.window_days * DAY if settings.window_days else span / (settings.n_folds + 1)
    valid = settings.valid_days * DAY if settings.valid_days else window / 2
    first_fit_end = end - settings.n_folds * window - valid
    if first_fit_end <= start:
        raise CrossValidationError(
            f"n_folds x window + validation = {settings.n_folds} x {window / DAY:.2f} + {valid / DAY:.2f} days "
            f"leaves no training period in the {span / DAY:.2f} days of history ({_date(start)} to {_date(end)}): "
            "use fewer folds or shorter windows"
        )
    users, songs = edge_index
    folds = []
    for i in range(settings.n_folds):
        eval_start = end - (settings.n_folds - i) * window
        eval_end = end if i == settings.n_folds - 1 else eval_start + window
        valid_start = eval_start - valid
        fit_mask = times < valid_start
        warm_user = torch.zeros(int(users.max()) + 1, dtype=torch.bool)
        warm_user[users[fit_mask]] = True
        known_song = torch.zeros(int(songs.max()) + 1, dtype=torch.bool)
        known_song[songs[fit_mask]] = True
        in_valid = (times >= valid_start) & (times < eval_start)
        in_eval = (times >= eval_start) & (times < eval_end)
        warm = warm_user[users]
        fold = TimeFold(
            i + 1,
            valid_start,
            eval_start,
            eval_end,
            train=torch.nonzero(fit_mask).flatten(),
            valid=torch.nonzero(in_valid & warm).flatten(),
            test=torch.nonzero(in_eval & warm).flatten(),
            cold_user_pairs=int((in_eval & ~warm).sum()),
            new_song_pairs=int((in_eval & warm & ~known_song[songs]).sum()),
        )
        _require_enough(fold, settings.min_pairs)
        folds.append(fold)
    return folds


def _require_enough(fold: TimeFold, minimum: int) -> None:
    counts = {"training": fold.train.numel(), "validation": fold.valid.numel(), "evaluation": fold.test.numel()}
    short = [f"{count} {part}" for part, count in counts.items() if count < minimum]
    if short:
        raise CrossValidationError(
            f"too few interactions for fold {fold.index} (evaluation window {_date(fold.eval_start)} to "
            f"{_date(fold.eval_end)}): {', '.join(short)} interactions of users with training history, need >= "
            f"{minimum} each (training {counts['training']}, validation {counts['validation']}, evaluation "
            f"{counts['evaluation']}, evaluation pairs of cold users {fold.cold_user_pairs}); use fewer folds, longer "
            "windows or a lower min_pairs"
        )


def fold_leaks(data: HeteroData, folds: list[TimeFold]) -> dict[int, dict[str, int]]:
    """Per fold: validation or evaluation pairs present in the fold's message-passing graph, and
    training (fit or validation) pairs first played at or after the evaluation window starts.
    Both are 0 for leak-free folds."""
    listens = data[LISTENS]
    leaks = {}
    for fold in folds:
        view = message_passing_graph(data, fold.train)
        known = torch.cat([fold.train, fold.valid])
        leaks[fold.index] = {
            "heldout_edges_in_graph": heldout_in_view(view, data, SCHEMA, torch.cat([fold.valid, fold.test])),
            "training_edges_not_before_window": int((listens[TIME_FIELD][known] >= fold.eval_start).sum()),
        }
    return leaks


def evaluate_fold(
    data: HeteroData, fold: TimeFold, config: ModelConfig, max_epochs: int | None = None, log: Logger | None = None
) -> dict[str, float]:
    """Train ``config`` on the fold's fit edges (early stopping on its validation slice) and score
    the evaluation window, ranking every song with the user's fit and validation songs masked."""
    from . import DATASET

    pairs = data[LISTENS].edge_index
    split = {"train": fold.train, "valid": fold.valid, "test": fold.test}
    model, result, _ = DATASET.fit(config, data, split, max_epochs=max_epochs, log=log)
    known = pairs[:, torch.cat([fold.train, fold.valid])]
    metrics = link_prediction_metrics(model.score, pairs[:, fold.test], known, int(data["song"].num_nodes))
    return {**metrics, "epochs_run": result.epochs_run, "train_seconds": result.seconds if config.trainable else 0.0}


@dataclass
class CrossValidationResult:
    folds: list[TimeFold]
    per_fold: pl.DataFrame  # config, fold, each metric, users_evaluated, epochs_run, train_seconds
    summary: pl.DataFrame  # config, metric, fold_1..fold_n, mean, std


def cross_validate(
    data: HeteroData,
    configs: list[ModelConfig],
    settings: FoldSettings,
    max_epochs: int | None = None,
    log: Logger | None = None,
) -> CrossValidationResult:
    """Every config on every fold of :func:`time_folds` over ``data``'s listens edges."""
    log = log or (lambda message: None)
    if not configs:
        raise CrossValidationError("no configs to evaluate")
    if max_epochs is not None and max_epochs < 1:
        raise CrossValidationError(f"max_epochs must be >= 1, got {max_epochs}")
    listens = data[LISTENS]
    if TIME_FIELD not in listens:
        raise CrossValidationError(f"the listening graph's listens edges lack {TIME_FIELD!r}: rebuild listening_graph")
    folds = time_folds(listens.edge_index, listens[TIME_FIELD], settings)
    rows = []
    for config in configs:
        for fold in folds:
            log(f"{config.name}: fold {fold.index}/{len(folds)} ({fold.train.numel()} training interactions)")
            rows.append(
                {"config": config.name, "fold": fold.index, **evaluate_fold(data, fold, config, max_epochs, log)}
            )
    per_fold = pl.DataFrame(rows)
    return CrossValidationResult(folds, per_fold, summarize(per_fold, len(folds)))


def summarize(per_fold: pl.DataFrame, n_folds: int, metrics: tuple[str, ...] = CV_METRICS) -> pl.DataFrame:
    """One row per (config, metric): the value of each fold, their mean and sample std (ddof 1)."""
    long = per_fold.unpivot(index=["config", "fold"], on=list(metrics), variable_name="metric")
    wide = long.pivot(on="fold", index=["config", "metric"], values="value")
    wide = wide.select("config", "metric", *[pl.col(str(fold)).alias(f"fold_{fold}") for fold in range(1, n_folds + 1)])
    stats = long.group_by("config", "metric").agg(
        pl.col("value").mean().alias("mean"), pl.col("value").std(ddof=1).alias("std")
    )
    order = {metric: position for position, metric in enumerate(metrics)}
    return (
        wide.join(stats, on=["config", "metric"])
        .with_columns(pl.col("metric").replace_strict(order).alias("_order"))
        .sort("config", "_order")
        .drop("_order")
    )


def mean_std_table(summary: pl.DataFrame, metrics: tuple[str, ...] = CV_METRICS) -> pl.DataFrame:
    """``config`` x metric cells formatted ``mean ± std`` (for markdown)."""
    cells: dict[str, dict[str, str]] = {}
    for row in summary.iter_rows(named=True):
        cells.setdefault(row["config"], {})[row["metric"]] = f"{row['mean']:.4f} ± {row['std']:.4f}"
    shown = [m for m in metrics if any(m in row for row in cells.values())]
    return pl.DataFrame([{"config": name, **{m: cells[name].get(m, "-") for m in shown}} for name in sorted(cells)])


def mean_std_plot(summary: pl.DataFrame, metrics: tuple[str, ...] = ("ndcg@10", "recall@10"), title: str = "") -> str:
    """Bars of each config's mean per metric with ± std error bars, as markdown."""
    configs = sorted(set(summary["config"]))
    width = 0.8 / max(len(configs), 1)
    fig, axis = plt.subplots(figsize=(6, 3))
    for position, name in enumerate(configs):
        rows = {row["metric"]: row for row in summary.filter(pl.col("config") == name).iter_rows(named=True)}
        offsets = [m + (position - (len(configs) - 1) / 2) * width for m in range(len(metrics))]
        axis.bar(
            offsets,
            [rows[m]["mean"] for m in metrics],
            width=width,
            yerr=[rows[m]["std"] for m in metrics],
            capsize=3,
            label=name,
        )
    axis.set_xticks(range(len(metrics)), metrics)
    axis.set_title(title or "time-series CV: mean ± std over folds")
    axis.legend(fontsize=7)
    return figure_markdown(fig, title or "time-series cross-validation")
