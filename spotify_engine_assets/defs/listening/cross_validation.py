"""Time-series cross-validation of listening model configs: expanding-window folds by first play,
each config trained and evaluated per fold, mean ± std per metric (``datasets/listening/cross_validation.py``)."""

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.config import ConfigError
from ...core.data.graph import from_payload
from ...core.plots import frame_markdown
from ...core.presentation import metric_value
from ...core.storage.artifacts import atomic_write_bytes
from ...datasets.listening import DATASET
from ...datasets.listening.cross_validation import (
    TIME_FIELD,
    CrossValidationError,
    FoldSettings,
    cross_validate,
    fold_leaks,
    mean_std_plot,
    mean_std_table,
)
from ..resources import DataLake, TorchRuntime
from .graph import CHAIN

REPORT_NAME = "time_series_cv"


class TimeSeriesCVConfig(dg.Config):
    configs: list[str] = Field(
        default=["most_popular", "lightgcn", "gat_enhanced"],
        description="Model configs to evaluate (names in the model registry).",
    )
    n_folds: int = Field(default=3, ge=2, description="Number of expanding-window folds (>= 2).")
    window_days: float | None = Field(
        default=None,
        description="Length of each evaluation window in days (None: the history split into n_folds + 1 parts).",
    )
    valid_days: float | None = Field(
        default=None, description="Validation slice before each cut, for early stopping, in days (None: half a window)."
    )
    min_pairs: int = Field(
        default=10, ge=1, description="Least training, validation and evaluation interactions per fold."
    )
    max_epochs: int | None = Field(
        default=None, ge=1, description="Cap on epochs per fold (None: each config's max_epochs)."
    )


@CHAIN.asset(
    "time_series_cv",
    "evaluation",
    ins=CHAIN.ins("graph"),
    kinds={"pytorch", "polars"},
    checks={
        "folds_leak_free": (
            True,
            "No fold's message-passing graph holds a validation or evaluation edge, and "
            "every training edge of a fold was first played before its evaluation window.",
        )
    },
)
def time_series_cv(
    context: dg.AssetExecutionContext,
    config: TimeSeriesCVConfig,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    graph: dict,
):
    """Time-series cross-validation: n expanding-window folds by each pair's first play (train on
    the past, early-stop on the slice just before the cut, evaluate on the next window with the
    user's known songs masked; users without training history in a fold are left out). Each
    config is trained per fold on that fold's training edges only; the output has every fold's
    value and the mean ± std per config and metric (also ``reports/listening/time_series_cv.*``)."""
    torch_runtime.apply()
    try:
        registry = DATASET.registry.full(lake.path)
    except ConfigError as error:
        raise dg.Failure(f"time_series_cv: the model registry is invalid: {error}") from error
    try:
        model_configs = [DATASET.registry.get(name, registry) for name in config.configs]
    except ConfigError as error:
        raise dg.Failure(f"time_series_cv config 'configs': {error}") from error
    settings = FoldSettings(config.n_folds, config.window_days, config.valid_days, config.min_pairs)
    data = from_payload(graph)
    try:
        result = cross_validate(data, model_configs, settings, config.max_epochs, log=context.log.info)
    except (CrossValidationError, ValueError) as error:
        raise dg.Failure(f"time_series_cv: {error}") from error

    folds = pl.DataFrame([fold.summary() for fold in result.folds])
    runs = result.per_fold.select("config", "fold", "users_evaluated", "epochs_run", "train_seconds")
    tables = {  # metadata name, report heading, markdown
        "summary": ("mean ± std over folds", frame_markdown(mean_std_table(result.summary), max_rows=100)),
        "folds": ("folds", frame_markdown(folds, max_rows=100)),
        "per_fold": ("per fold", frame_markdown(result.summary, max_rows=1000)),
        "training_runs": ("training runs", frame_markdown(runs, max_rows=1000)),
    }
    reports = lake.reports_dir / "listening"
    atomic_write_bytes(reports / f"{REPORT_NAME}.csv", result.summary.write_csv().encode())
    sections = [f"## {heading}\n\n{markdown}" for heading, markdown in tables.values()]
    markdown = "\n\n".join([f"# Time-series cross-validation ({len(result.folds)} folds by {TIME_FIELD})", *sections])
    atomic_write_bytes(reports / f"{REPORT_NAME}.md", (markdown + "\n").encode())
    metadata = {
        "n_folds": len(result.folds),
        "time_field": TIME_FIELD,
        "configs": ", ".join(config.configs),
        **{name: dg.MetadataValue.md(table) for name, (_, table) in tables.items()},
        "plot": dg.MetadataValue.md(mean_std_plot(result.summary)),
        "report": dg.MetadataValue.path(str(reports / f"{REPORT_NAME}.md")),
    }
    for row in result.summary.filter(pl.col("metric") == "ndcg@10").iter_rows(named=True):
        metadata[f"{row['config']}/ndcg@10_mean"] = metric_value(row["mean"])
        metadata[f"{row['config']}/ndcg@10_std"] = metric_value(row["std"])
    yield dg.Output(result.summary, metadata=metadata)
    leaks = fold_leaks(data, result.folds)
    yield dg.AssetCheckResult(
        check_name="folds_leak_free",
        passed=all(count == 0 for fold in leaks.values() for count in fold.values()),
        metadata={"leaks_per_fold": dg.MetadataValue.json({str(k): v for k, v in leaks.items()})},
    )


defs = dg.Definitions(assets=[time_series_cv])
