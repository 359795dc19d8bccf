"""Time-series cross-validation of listening model configs: expanding-window folds by first play,
each config trained and evaluated per fold, mean ± std per metric (``datasets/listening/cross_validation.py``)."""


import dagster as dg
import polars as pl
from pydantic import Field

from ... import core
from ...core.config import ConfigError
from ...core.data.graph import from_payload
from ...core.plots import frame_markdown
from ...core.storage.artifacts import atomic_write_bytes
from ...core.storage.paths import source_version
from ...datasets import listening
from ...datasets.listening import DATASET
from ...datasets.listening import cross_validation as cv_lib
from ...datasets.listening.cross_validation import (
    CrossValidationError,
    FoldSettings,
    cross_validate,
    fold_leaks,
    mean_std_plot,
    mean_std_table,
)
from ..resources import DataLake, TorchRuntime

CV_VERSION = source_version(core, listening)
REPORT_NAME = "time_series_cv"


class TimeSeriesCVConfig(dg.Config):
    configs: list[str] = Field(
        default=["most_popular", "lightgcn", "gat_enhanced"],
        description="Model configs to evaluate (names in the model registry).",
    )
    n_folds: int = Field(default=3, ge=2, description="Number of expanding-window folds (>= 2).")
    window_days: float | None = Field(
        default=None, description="Length of each evaluation window in days (None: the history split into n_folds + 1 parts)."
    )
    valid_days: float | None = Field(
        default=None, description="Validation slice before each cut, for early stopping, in days (None: half a window)."
    )
    min_pairs: int = Field(default=10, ge=1, description="Least training, validation and evaluation interactions per fold.")
    max_epochs: int | None = Field(default=None, ge=1, description="Cap on epochs per fold (None: each config's max_epochs).")


@dg.asset(
    key=["listening", "time_series_cv"],
    ins={"graph": dg.AssetIn(["listening", "graph"])},
    group_name="listening_evaluation",
    kinds={"pytorch", "polars"},
    code_version=CV_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            "folds_leak_free",
            asset=dg.AssetKey(["listening", "time_series_cv"]),
            blocking=True,
            description="No fold's message-passing graph holds a validation or evaluation edge, and every training "
            "edge of a fold was first played before its evaluation window.",
        )
    ],
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
    table = mean_std_table(result.summary)
    runs = result.per_fold.select("config", "fold", "users_evaluated", "epochs_run", "train_seconds")
    reports = lake.reports_dir / "listening"
    atomic_write_bytes(reports / f"{REPORT_NAME}.csv", result.summary.write_csv().encode())
    markdown = "\n\n".join(
        [
            f"# Time-series cross-validation ({len(result.folds)} folds by {cv_lib.TIME_FIELD})",
            "## mean ± std over folds",
            frame_markdown(table, max_rows=100),
            "## folds",
            frame_markdown(folds, max_rows=100),
            "## per fold",
            frame_markdown(result.summary, max_rows=1000),
            "## training runs",
            frame_markdown(runs, max_rows=1000),
        ]
    )
    atomic_write_bytes(reports / f"{REPORT_NAME}.md", (markdown + "\n").encode())
    metadata = {
        "n_folds": len(result.folds),
        "time_field": cv_lib.TIME_FIELD,
        "configs": ", ".join(config.configs),
        "summary": dg.MetadataValue.md(frame_markdown(table, max_rows=100)),
        "folds": dg.MetadataValue.md(frame_markdown(folds, max_rows=100)),
        "per_fold": dg.MetadataValue.md(frame_markdown(result.summary, max_rows=1000)),
        "training_runs": dg.MetadataValue.md(frame_markdown(runs, max_rows=1000)),
        "plot": dg.MetadataValue.md(mean_std_plot(result.summary)),
        "report": dg.MetadataValue.path(str(reports / f"{REPORT_NAME}.md")),
    }
    for row in result.summary.filter(pl.col("metric") == "ndcg@10").iter_rows(named=True):
        metadata[f"{row['config']}/ndcg@10_mean"] = float(row["mean"])
        metadata[f"{row['config']}/ndcg@10_std"] = float(row["std"])
    yield dg.Output(result.summary, metadata=metadata)
    leaks = fold_leaks(data, result.folds)
    yield dg.AssetCheckResult(
        check_name="folds_leak_free",
        passed=all(count == 0 for fold in leaks.values() for count in fold.values()),
        metadata={"leaks_per_fold": dg.MetadataValue.json({str(k): v for k, v in leaks.items()})},
    )


defs = dg.Definitions(assets=[time_series_cv])
