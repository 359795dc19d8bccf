"""Experiment management: the users' segments for fairness slices, the experiments table over
every recorded metric report, A/B comparisons of configured model pairs with real statistics,
and the champion per split (promotions recorded)."""

from pathlib import Path

import dagster as dg
import matplotlib.pyplot as plt
import polars as pl
from pydantic import Field

from ..lib import experiments as experiments_lib
from ..lib import stats as stats_lib
from ..lib.artifacts import atomic_write_bytes
from ..lib.configs import ConfigError, load_thresholds
from ..lib.experiments import experiments_frame, load_ab_plan, load_champion, not_comparable, per_user_frame, update_champion
from ..lib.paths import source_version
from ..lib.plots import difference_distributions, figure_markdown, frame_markdown
from ..lib.stats import compare_models
from .resources import DUCKDB_POOL, DataLake, Warehouse

EXPERIMENT_COLUMNS = ("experiment", "config", "split", "seed", "recorded_at", "data", "git_commit", "recall@10", "ndcg@10",
                      "mrr@10", "coverage@10", "gini@10", "personalization@10", "gate", "train_seconds")
AB_COLUMNS = ("pair", "metric", "n", "mean_control", "mean_treatment", "mean_diff", "ci_low", "ci_high", "cohens_d",
              "t_p_holm", "wilcoxon_p_holm", "verdict", "welch_p_holm", "welch_verdict")


@dg.asset(
    key="user_segments",
    deps=[dg.AssetKey(["marts", "users"])],
    group_name="graph",
    kinds={"duckdb", "polars"},
    pool=DUCKDB_POOL,
    code_version="1",
)
def user_segments(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[pl.DataFrame]:
    """Each user's warehouse id and type (casual / regular / power) from ``marts.users``: the
    user-type slices of the metric reports' fairness tables."""
    frame = warehouse.read_table("marts.users").select("user_id", "user_type").sort("user_id")
    counts = frame.group_by("user_type").len().sort("user_type")
    return dg.Output(
        frame,
        metadata={"users": frame.height, **{f"users/{row['user_type']}": int(row["len"]) for row in counts.iter_rows(named=True)}},
    )


def _publish(lake: DataLake, name: str, frame: pl.DataFrame) -> str:
    """``reports/<name>.{md,csv}`` written atomically; returns the markdown."""
    markdown = frame_markdown(frame, max_rows=200)
    atomic_write_bytes(lake.reports_dir / f"{name}.md", (markdown + "\n").encode())
    atomic_write_bytes(lake.reports_dir / f"{name}.csv", frame.write_csv().encode())
    return markdown


@dg.asset(key="experiments", group_name="experiments", kinds={"polars"}, code_version=source_version(experiments_lib))
def experiments(context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]) -> dg.Output[pl.DataFrame]:
    """Every recorded metric report (each materialization of each config) as one table: config,
    seed, data fingerprint, git commit, key metrics, gate. ``current`` marks the live version.
    Also ``reports/experiments.{md,csv}``; on the command line ``spotify-engine experiments list``."""
    if not metric_report:
        raise dg.Failure("no metric_report partition is materialized yet: materialize some model configs first")
    frame = experiments_frame(lake.artifacts, include_history=True)
    _publish(lake, "experiments", frame)
    current = frame.filter(pl.col("current"))
    shown = current.select([c for c in EXPERIMENT_COLUMNS if c in current.columns])
    return dg.Output(
        frame,
        metadata={
            "experiments": frame.height,
            "configs": current.height,
            "current": dg.MetadataValue.md(frame_markdown(shown, max_rows=100)),
        },
    )


class ABTestConfig(dg.Config):
    plan: str | None = Field(default=None, description="Path of an A/B plan YAML (default configs/ab_tests.yaml).")


def difference_plot(table: pl.DataFrame, title: str) -> str:
    """Mean treatment - control difference with its bootstrap 95% CI, one row per pair and metric."""
    labels = [f"{p} | {m}" for p, m in zip(table["pair"], table["metric"])]
    fig, axis = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    colors = {"better": "tab:green", "worse": "tab:red"}
    for row, record in enumerate(table.iter_rows(named=True)):
        color = colors.get(record["verdict"], "tab:gray")
        axis.errorbar(record["mean_diff"], row, xerr=[[record["mean_diff"] - record["ci_low"]], [record["ci_high"] - record["mean_diff"]]],
                      fmt="o", color=color, capsize=3)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("treatment - control (mean over users, 95% bootstrap CI)")
    axis.set_title(title)
    return figure_markdown(fig, title)


@dg.asset(key="ab_tests", group_name="experiments", kinds={"scipy", "polars"}, code_version=source_version(stats_lib, experiments_lib))
def ab_tests(context: dg.AssetExecutionContext, config: ABTestConfig, lake: DataLake, metric_report: dict[str, dict]) -> dg.Output[pl.DataFrame]:
    """A/B comparisons of the configured (control, treatment) config pairs on the same split:
    paired t-test, Wilcoxon signed-rank, bootstrap 95% CI of the mean difference, paired Cohen's d,
    Holm across the metrics; and the split-users variant (random halves, Welch's t-test). A
    verdict per pair and metric: better / worse / no detectable difference."""
    thresholds = load_thresholds()
    try:
        plan = load_ab_plan(Path(config.plan) if config.plan else None)
    except ConfigError as error:
        raise dg.Failure(f"invalid A/B plan: {error}") from error
    tables, skipped = [], []
    distributions: dict[str, list[float]] = {}  # per-user treatment - control of the first metric
    for pair in plan.pairs:
        missing = [name for name in (pair.control, pair.treatment) if name not in metric_report]
        if missing:
            skipped.append(f"{pair.name}: metric_report {', '.join(missing)} not materialized")
            continue
        control, treatment = metric_report[pair.control], metric_report[pair.treatment]
        reason = not_comparable(control, treatment)
        if reason:
            skipped.append(f"{pair.name}: {reason}")
            continue
        try:
            table = compare_models(
                per_user_frame(control), per_user_frame(treatment), plan.metrics, alpha=thresholds.ab_alpha,
                n_resamples=thresholds.ab_bootstrap_resamples, primary=thresholds.ab_primary_test,
            )
        except ValueError as error:
            raise dg.Failure(f"A/B pair {pair.name}: {error}") from error
        joined = per_user_frame(control).join(per_user_frame(treatment), on="user_index", suffix="__t")
        metric = plan.metrics[0]
        distributions[f"{pair.name}: {metric}"] = (joined[f"{metric}__t"] - joined[metric]).to_list()
        tables.append(table.with_columns(
            pl.lit(pair.name).alias("pair"), pl.lit(pair.control).alias("control"),
            pl.lit(pair.treatment).alias("treatment"), pl.lit(control["split"]).alias("split"),
        ))
    for message in skipped:
        context.log.warning(f"A/B pair skipped: {message}")
    if not tables:  # nothing comparable materialized yet (e.g. one config run alone): not an error
        return dg.Output(
            pl.DataFrame(schema={"pair": pl.String, "metric": pl.String, "verdict": pl.String}),
            metadata={"pairs": 0, "skipped": dg.MetadataValue.json(skipped)},
        )
    table = pl.concat(tables)
    shown = table.select(AB_COLUMNS)
    markdown = _publish(lake, "ab_tests", shown)
    summary = (
        table.group_by("pair", maintain_order=True)
        .agg(
            pl.col("metric").filter(pl.col("verdict") == stats_lib.BETTER).alias("better"),
            pl.col("metric").filter(pl.col("verdict") == stats_lib.WORSE).alias("worse"),
        )
        .with_columns(
            pl.when(pl.col("worse").list.len() > 0).then(pl.lit(stats_lib.WORSE))
            .when(pl.col("better").list.len() > 0).then(pl.lit(stats_lib.BETTER))
            .otherwise(pl.lit(stats_lib.NO_DIFFERENCE)).alias("verdict"),
            pl.col("better").list.join(", "),
            pl.col("worse").list.join(", "),
        )
    )
    return dg.Output(
        table,
        metadata={
            "pairs": summary.height,
            "alpha": thresholds.ab_alpha,
            "primary_test": thresholds.ab_primary_test,
            "verdicts": dg.MetadataValue.md(frame_markdown(summary, max_rows=100)),
            "table": dg.MetadataValue.md(markdown),
            "plot": dg.MetadataValue.md(difference_plot(table, "A/B: treatment - control")),
            "per_user_differences": dg.MetadataValue.md(
                difference_distributions(distributions, "A/B: per-user treatment - control")
            ),
            "skipped": dg.MetadataValue.json(skipped),
        },
    )


@dg.asset(key="champion", group_name="experiments", kinds={"scipy"}, code_version=source_version(experiments_lib))
def champion(context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]) -> dg.Output[dict]:
    """The serving model per split. Seeded with the best gate-passing report; afterwards a
    challenger replaces it only when significantly better on the champion metric (paired test,
    Holm across challengers, ``thresholds.yaml``). Keeps the promotion history and the experiment
    keys already judged (the ``champion_gate`` check skips those)."""
    if not metric_report:
        raise dg.Failure("no metric_report partition is materialized yet: materialize some model configs first")
    thresholds = load_thresholds()
    previous = load_champion(lake.artifacts)
    try:
        state, events = update_champion(previous, metric_report, thresholds)
    except ValueError as error:
        raise dg.Failure(f"cannot update the champion: {error}") from error
    for event in events:
        context.log.info(f"champion [{event['split']}]: {event['event']} {event['config']} ({event['reason']})")
    current = pl.DataFrame(
        [{"split": split, **{k: v for k, v in entry.items() if k != "experiment_key"}} for split, entry in sorted(state["splits"].items())]
    )
    events_frame = pl.DataFrame(events) if events else pl.DataFrame()
    history = pl.DataFrame(state["history"]) if state["history"] else pl.DataFrame()
    return dg.Output(
        state,
        metadata={
            **{f"champion/{split}": entry["config"] for split, entry in state["splits"].items()},
            "champions": dg.MetadataValue.md(frame_markdown(current) if current.height else "no champion"),
            "this_update": dg.MetadataValue.md(frame_markdown(events_frame) if events_frame.height else "no reports"),
            "history": dg.MetadataValue.md(frame_markdown(history, max_rows=50) if history.height else "none"),
            "promotions": sum(1 for e in events if e["event"] == "promoted"),
        },
    )


defs = dg.Definitions(assets=[user_segments, experiments, ab_tests, champion])
