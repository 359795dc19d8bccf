"""Training and evaluation: trained models partitioned by named config, their metric reports
(gated against most-popular and the current champion), and a comparison of every config."""


import hashlib
import io
import json
import shutil
import time

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ..lib import evaluation as evaluation_lib
from ..lib import experiments as experiments_lib
from ..lib import graph as graph_lib
from ..lib import metrics as metrics_lib
from ..lib import models as models_lib
from ..lib import splits as splits_lib
from ..lib import training as training_lib
from ..lib.artifacts import ArtifactNotFoundError, atomic_write_bytes, load_torch
from ..lib.evaluation import EvaluationData, PeakMemory, evaluate, fairness_tables, latency_per_user, memory_estimate_bytes
from ..lib.configs import ConfigError, ModelConfig, get_config, load_thresholds
from ..lib.recommend import load_model
from ..lib.registry import full_registry
from ..lib.graph import LISTENS, from_payload, message_passing_graph
from ..lib.metrics import ranking_metrics
from ..lib.models import parameter_count
from ..lib.plots import frame_markdown, metric_bars, training_curve
from ..lib.training import build_model, embed, fit_most_popular, num_nodes_of, task_metrics, train, training_inputs
from ..lib.paths import source_version
from .registry import model_configs, model_registry, promotion_metadata
from .resources import DataLake, TorchRuntime

TRAINING_VERSION = source_version(models_lib, training_lib)
EVALUATION_VERSION = source_version(models_lib, metrics_lib, evaluation_lib, experiments_lib)
UPSTREAM_CODE_VERSIONS = {"listening_graph": source_version(graph_lib), "interaction_splits": source_version(splits_lib)}
REPORT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "hit_rate@10", "coverage@10")
# beyond the spine's columns: shown in the comparison when a report has them
EXTRA_METRICS = ("mrr@10", "gini@10", "novelty@10", "ild_genre@10", "personalization@10")
ACCURACY_FAMILIES = ("recall", "precision", "ndcg", "mrr", "hit_rate")
BEYOND_ACCURACY = ("coverage@10", "gini@10", "novelty@10", "ild_embedding@10", "ild_genre@10", "personalization@10")


class TrainRunConfig(dg.Config):
    max_epochs: int | None = Field(default=None, description="Cap on epochs for this run (None: the config's max_epochs).")
    checkpoint_every: int = Field(default=1, description="Write a resumable checkpoint every this many epochs.")


def checkpoint_dir_for(lake: DataLake, model_config: ModelConfig, data_fingerprint: str, max_epochs: int | None):
    """The checkpoint folder of one training run: data lake, partition, and a hash of config, data,
    epoch cap and training code, so a checkpoint of another config or data is never resumed."""
    key = json.dumps(
        {"config": model_config.model_dump(), "data": data_fingerprint, "max_epochs": max_epochs, "code": TRAINING_VERSION},
        sort_keys=True,
    )
    return lake.path / "checkpoints" / "trained_model" / model_config.name / hashlib.sha256(key.encode()).hexdigest()[:16]


def _config_for(context: dg.AssetExecutionContext, lake: DataLake) -> ModelConfig:
    """The partition's config: models.yaml or a config promoted into ``lake`` (model_registry)."""
    try:
        return get_config(context.partition_key, full_registry(lake.path))
    except ConfigError as error:
        raise dg.Failure(str(error)) from error


def _held_out(data, split: dict) -> dict[str, torch.Tensor]:
    edge_index = data[LISTENS].edge_index
    return {part: edge_index[:, split[part]] for part in ("train", "valid", "test")}


@dg.asset(
    key="trained_model",
    partitions_def=model_configs,
    group_name="training",
    kinds={"pytorch", "pyg"},
    code_version=TRAINING_VERSION,
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainRunConfig,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    listening_graph: dict,
    interaction_splits: dict,
) -> dg.Output[dict]:
    """A model trained with BPR (plus the config's task heads and surrogates) on the training
    interactions of its config's split by the config's trainer: advanced (default) early-stops on
    validation Recall@10 with ReduceLROnPlateau, and a run killed mid-way resumes from its last
    checkpoint when re-materialized; simple runs fixed epochs without validation. Best and final
    weights, config and history."""
    model_config = _config_for(context, lake)
    if config.max_epochs is not None and config.max_epochs < 1:
        raise dg.Failure(f"max_epochs must be >= 1, got {config.max_epochs}")
    if config.checkpoint_every < 1:
        raise dg.Failure(f"checkpoint_every must be >= 1, got {config.checkpoint_every}")
    torch_runtime.apply()
    data = from_payload(listening_graph)
    split = interaction_splits[model_config.split]
    view = message_passing_graph(data, split["train"])
    pairs = _held_out(data, split)
    artifact = {"config": model_config.model_dump(), "split_settings": interaction_splits["settings"]}
    provenance = _provenance(context, model_config, data, split, config.max_epochs)
    artifact["provenance"] = provenance
    metadata: dict = {
        "config": dg.MetadataValue.json(model_config.model_dump()),
        "split": model_config.split,
        "seed": model_config.seed,
        "data_fingerprint": provenance["data"]["combined"],
        "git_commit": str(provenance["git"]["commit"])[:12],
        "provenance": dg.MetadataValue.json(provenance),
        **promotion_metadata(lake.path, model_config.name),
    }
    if not model_config.trainable:
        model = fit_most_popular(view)
        artifact.update(best_state={"popularity": model.popularity}, final_state={"popularity": model.popularity})
        artifact.update(history=[], best_epoch=0, epochs_run=0, train_seconds=0.0, num_parameters=0)
        metadata.update(num_parameters=0, epochs_run=0)
        return dg.Output(artifact, metadata=metadata)

    try:
        inputs = training_inputs(model_config, data, split["train"])
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    checkpoints = checkpoint_dir_for(lake, model_config, provenance["data"]["combined"], config.max_epochs)
    for stale in checkpoints.parent.glob("*") if checkpoints.parent.exists() else ():
        if stale != checkpoints:
            shutil.rmtree(stale, ignore_errors=True)  # another config/data: never resumable
    model = build_model(model_config, num_nodes_of(data))
    result = train(
        model,
        view,
        pairs["valid"],
        model_config,
        max_epochs=config.max_epochs,
        log=context.log.info,
        **inputs,
        checkpoint_dir=checkpoints if model_config.trainer == "advanced" else None,  # the simple trainer writes none
        checkpoint_every=config.checkpoint_every,
    )
    artifact.update(
        best_state=result.best_state,
        final_state=result.final_state,
        history=result.history,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        train_seconds=result.seconds,
        num_parameters=parameter_count(model),
    )
    metadata.update(
        num_parameters=parameter_count(model),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        trainer=model_config.trainer,
        **({} if result.best_valid_recall is None else {"best_valid_recall_at_10": result.best_valid_recall}),
        train_seconds=round(result.seconds, 2),
        resumed_from_epoch=result.resumed_from_epoch,
        torch_threads=torch.get_num_threads(),
        training_curve=dg.MetadataValue.md(training_curve(result.history, model_config.name)),
    )
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next materialization trains afresh
    return dg.Output(artifact, metadata=metadata)


def _upstream_versions(context: dg.AssetExecutionContext, keys: tuple[str, ...]) -> dict[str, dict]:
    """Dagster's recorded data and code version of each upstream asset's latest materialization."""
    versions = {}
    for key in keys:
        entry = None
        try:
            entry = context.instance.get_latest_materialization_event(dg.AssetKey(key))
        except Exception as error:  # noqa: BLE001 - provenance is best effort, never fails a run
            context.log.warning(f"cannot read the latest materialization of {key}: {error}")
        tags = (entry.asset_materialization.tags or {}) if entry and entry.asset_materialization else {}
        versions[key] = {
            "data_version": tags.get("dagster/data_version", "unknown"),
            "code_version": tags.get("dagster/code_version", "unknown"),
            "run_id": entry.run_id if entry else "unknown",
        }
    return versions


def _provenance(context: dg.AssetExecutionContext, model_config: ModelConfig, data, split: dict, max_epochs: int | None) -> dict:
    """What an experiment was made of: config and seed, data hashes, code, git, dependencies."""
    return {
        "config": model_config.model_dump(),
        "seed": model_config.seed,
        "max_epochs_override": max_epochs,
        "data": experiments_lib.data_fingerprint(data, split),
        "upstream": _upstream_versions(context, ("listening_graph", "interaction_splits")),
        "code_versions": {"trained_model": TRAINING_VERSION, **UPSTREAM_CODE_VERSIONS},
        "git": experiments_lib.git_state(),
        "dependencies": experiments_lib.dependency_versions(),
        "torch_threads": torch.get_num_threads(),
        "run_id": context.run_id,
        "recorded_at": experiments_lib.now_iso(),
    }


def evaluate_split(model, data, split: dict) -> dict[str, float]:
    """Test metrics: rank all songs, masking each user's training and validation songs."""
    view = message_passing_graph(data, split["train"])
    pairs = _held_out(data, split)
    exclude = torch.cat([pairs["train"], pairs["valid"]], dim=1)
    user_emb, song_emb = embed(model, view)
    return ranking_metrics(user_emb, song_emb, pairs["test"], exclude)


def _random_reference(data, split: dict, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    users = torch.randn(data["user"].num_nodes, 16, generator=generator)
    songs = torch.randn(data["song"].num_nodes, 16, generator=generator)
    pairs = _held_out(data, split)
    return ranking_metrics(users, songs, pairs["test"], torch.cat([pairs["train"], pairs["valid"]], dim=1))


def _markdown_table(rows: dict[str, dict[str, float]], first: str) -> str:
    names = list(rows)
    columns = list(next(iter(rows.values())))
    frame = pl.DataFrame({first: columns, **{name: [rows[name][c] for c in columns] for name in names}})
    return frame_markdown(frame, max_rows=50)


def _accuracy_grid(metrics: dict[str, float]) -> str:
    """Accuracy metrics as a family x K markdown grid."""
    ks = sorted({int(name.split("@")[1]) for name in metrics if name.split("@")[0] in ACCURACY_FAMILIES})
    rows = {f"@{k}": {family: metrics.get(f"{family}@{k}", float("nan")) for family in ACCURACY_FAMILIES} for k in ks}
    return _markdown_table(rows, "metric")


def _load_champion_report(lake: DataLake, champion: dict, split: str, candidate: str) -> dict | None:
    current = champion.get("splits", {}).get(split)
    if not current or current["config"] == candidate:
        return None
    try:
        return load_torch(lake.artifacts.current(["metric_report"], current["config"]) / "data.pt")
    except ArtifactNotFoundError:
        return None


def _fairness_observed(gaps: pl.DataFrame, metric: str) -> dict:
    rows = gaps.filter(pl.col("metric") == metric)
    if rows.is_empty():
        return {"relative_gap": 0.0, "dimension": "-", "best_group": "-", "worst_group": "-"}
    worst = rows.sort("relative_gap").row(-1, named=True)
    return worst


@dg.asset(
    key="metric_report",
    partitions_def=model_configs,
    group_name="evaluation",
    kinds={"pytorch"},
    code_version=EVALUATION_VERSION,
    ins={"user_segments": dg.AssetIn("user_segments")},
    check_specs=[
        dg.AssetCheckSpec(
            "ndcg_gate",
            asset="metric_report",
            blocking=True,
            description="Test NDCG@10 beats most-popular on the same split by the configured ratio "
            "(most-popular itself must beat a random ranking).",
        ),
        dg.AssetCheckSpec(
            "champion_gate",
            asset="metric_report",
            blocking=True,
            description="The candidate is not significantly worse than the current champion of its split on the "
            "champion metric (paired test on per-user values, same split and data; thresholds.yaml).",
        ),
        dg.AssetCheckSpec(
            "fairness_gap",
            asset="metric_report",
            blocking=False,
            description="Largest relative gap of the fairness metric between user types or activity terciles "
            "stays within the threshold (warning).",
        ),
    ],
)
def metric_report(
    context: dg.AssetExecutionContext,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    trained_model: dict,
    listening_graph: dict,
    interaction_splits: dict,
    user_segments: pl.DataFrame,
):
    """Comprehensive test evaluation of one config, ranking all songs with the user's training and
    validation songs masked: Recall/Precision/NDCG/MRR/HitRate at 5, 10, 20; coverage, Gini of
    recommendation counts, novelty, intra-list diversity (embeddings and genres),
    personalization; every metric per user type and activity tercile with the largest gap;
    parameters, training time, per-user latency p50/p95, throughput, memory estimate vs measured
    peak. Per-user metric vectors are kept (and written as Parquet); most-popular on the same
    split is scored alongside; the provenance of the experiment is recorded."""
    torch_runtime.apply()
    data = from_payload(listening_graph)
    model_config = ModelConfig(**trained_model["config"])
    split = interaction_splits[model_config.split]
    try:
        eval_data = EvaluationData.from_graph(data, split, user_segments)
    except ValueError as error:
        raise dg.Failure(f"metric_report[{model_config.name}]: {error}") from error
    view = message_passing_graph(data, split["train"])
    model = load_model(trained_model, data)

    with PeakMemory() as memory:
        started = time.perf_counter()
        user_emb, song_emb = embed(model, view)
        forward_seconds = time.perf_counter() - started
        evaluation = evaluate(user_emb, song_emb, eval_data)
    latency = latency_per_user(user_emb, song_emb, evaluation.users, eval_data.test_exclude)
    num_edges = sum(int(view[t].edge_index.size(1)) for t in view.edge_types)
    layers = 0 if not model_config.trainable else (1 if model_config.model == "gat_basic" else model_config.num_layers)
    estimate = memory_estimate_bytes(
        trained_model["num_parameters"], sum(int(view[t].num_nodes) for t in view.node_types), int(user_emb.size(1)),
        num_edges, layers, evaluation.users.numel(), eval_data.num_songs, evaluation.topk.size(1),
    )
    efficiency = {
        "num_parameters": int(trained_model["num_parameters"]),
        "train_seconds": float(trained_model["train_seconds"]),
        "forward_seconds": forward_seconds,
        "latency_p50_ms": latency["p50_ms"],
        "latency_p95_ms": latency["p95_ms"],
        "latency_sampled_users": latency["sampled_users"],
        "throughput_users_per_s": evaluation.users.numel() / max(evaluation.topk_seconds, 1e-9),
        "memory_estimate_bytes": estimate["total"],
        "memory_estimate_parts": estimate,
        "memory_peak_bytes": memory.peak_bytes,
        "memory_estimate_to_peak": (estimate["total"] / memory.peak_bytes) if memory.peak_bytes else None,
    }

    metrics = evaluation.summary
    try:  # the task heads' ROC AUC on the held-out test edges, labels from their own attributes
        tasks = task_metrics(model, model_config, data, view, split["test"]) if model_config.trainable else {}
    except ValueError as error:
        raise dg.Failure(f"metric_report[{model_config.name}]: {error}") from error
    reference = evaluate(*embed(fit_most_popular(view), view), eval_data).summary
    random_reference = _random_reference(data, split)
    thresholds = load_thresholds()
    if model_config.trainable:
        baseline_name, baseline, ratio = "most_popular", reference["ndcg@10"], thresholds.ndcg10_min_ratio_vs_most_popular
    else:
        baseline_name, baseline, ratio = "random", random_reference["ndcg@10"], thresholds.ndcg10_min_ratio_vs_random
    threshold = baseline * ratio

    provenance = dict(trained_model.get("provenance") or {"config": model_config.model_dump(), "seed": model_config.seed})
    provenance["training_data"] = provenance.get("data")
    provenance["data"] = experiments_lib.data_fingerprint(data, split)
    provenance["code_versions"] = {**provenance.get("code_versions", {}), "metric_report": EVALUATION_VERSION}
    provenance["evaluated_in_run"] = context.run_id
    if provenance["training_data"] and provenance["training_data"] != provenance["data"]:
        context.log.warning(f"{model_config.name}: the model was trained on other data than it is evaluated on; re-materialize trained_model")

    parquet = lake.reports_dir / "per_user" / model_config.name / f"{context.run_id}.parquet"
    buffer = io.BytesIO()
    evaluation.per_user.write_parquet(buffer)
    atomic_write_bytes(parquet, buffer.getvalue())

    report = {
        "config": model_config.name,
        "model": model_config.model,
        "split": model_config.split,
        "metrics": metrics,
        "most_popular": reference,
        "random": random_reference,
        "num_parameters": trained_model["num_parameters"],
        "train_seconds": trained_model["train_seconds"],
        "epochs_run": trained_model["epochs_run"],
        "tasks": tasks,
        "gate": {"passed": metrics["ndcg@10"] >= threshold, "threshold": threshold, "baseline": baseline_name},
        "efficiency": efficiency,
        "fairness": {"groups": evaluation.fairness.to_dicts(), "gaps": evaluation.gaps.to_dicts()},
        "per_user": experiments_lib.per_user_payload(evaluation.per_user),
        "per_user_parquet": str(parquet),
        "provenance": provenance,
    }
    report["experiment_key"] = experiments_lib.experiment_key(provenance)

    table = pl.DataFrame(
        {
            "metric": list(REPORT_METRICS),
            model_config.name: [metrics[m] for m in REPORT_METRICS],
            "most_popular": [reference[m] for m in REPORT_METRICS],
        }
    )
    beyond = _markdown_table({model_config.name: {m: metrics[m] for m in BEYOND_ACCURACY},
                              "most_popular": {m: reference[m] for m in BEYOND_ACCURACY}}, "metric")
    shown_efficiency = {k: v for k, v in efficiency.items() if k != "memory_estimate_parts"}
    yield dg.Output(
        report,
        metadata={
            **{m: metrics[m] for m in REPORT_METRICS},
            **{m: metrics[m] for m in EXTRA_METRICS},
            "most_popular/ndcg@10": reference["ndcg@10"],
            **{f"test_auc/{task}": values["auc"] for task, values in tasks.items() if values["auc"] is not None},
            "users_evaluated": metrics["users_evaluated"],
            "report": dg.MetadataValue.md(frame_markdown(table)),
            "accuracy": dg.MetadataValue.md(_accuracy_grid(metrics)),
            "beyond_accuracy": dg.MetadataValue.md(beyond),
            "fairness": dg.MetadataValue.md(frame_markdown(evaluation.fairness, max_rows=50)),
            "fairness_gaps": dg.MetadataValue.md(frame_markdown(evaluation.gaps, max_rows=50)),
            "efficiency": dg.MetadataValue.json(shown_efficiency),
            "latency_p50_ms": latency["p50_ms"],
            "latency_p95_ms": latency["p95_ms"],
            "per_user_metrics": dg.MetadataValue.path(str(parquet)),
            "experiment_key": report["experiment_key"],
            "data_fingerprint": provenance["data"]["combined"],
        },
    )
    yield dg.AssetCheckResult(
        check_name="ndcg_gate",
        passed=metrics["ndcg@10"] >= threshold,
        metadata={
            "observed_ndcg@10": metrics["ndcg@10"],
            "threshold": threshold,
            "baseline": baseline_name,
            "baseline_ndcg@10": baseline,
            "required_ratio": ratio,
        },
    )

    champion = experiments_lib.load_champion(lake.artifacts)
    champion_report = _load_champion_report(lake, champion, model_config.split, model_config.name)
    try:
        decision = experiments_lib.gate_decision(report, champion, champion_report, thresholds)
    except ValueError as error:
        raise dg.Failure(f"champion_gate of {model_config.name}: {error}") from error
    yield dg.AssetCheckResult(
        check_name="champion_gate",
        passed=decision["passed"],
        metadata={
            "status": decision["status"],
            "champion": str(decision["champion"]),
            "metric": decision["metric"],
            "observed_p_value": decision.get("p_value", 1.0),
            "threshold_alpha": decision["alpha"],
            "observed_mean_diff": decision.get("mean_diff", 0.0),
            "ci_low": decision.get("ci_low", 0.0),
            "ci_high": decision.get("ci_high", 0.0),
        },
    )

    gaps = evaluation.gaps
    if thresholds.fairness_metric not in set(gaps["metric"]):
        if thresholds.fairness_metric not in evaluation.per_user.columns:
            raise dg.Failure(
                f"thresholds.yaml fairness_metric {thresholds.fairness_metric!r} is not a per-user metric; "
                f"choose one of {', '.join(c for c in evaluation.per_user.columns if '@' in c)}"
            )
        gaps = fairness_tables(evaluation.per_user, [thresholds.fairness_metric])[1]
    observed = _fairness_observed(gaps, thresholds.fairness_metric)
    yield dg.AssetCheckResult(
        check_name="fairness_gap",
        passed=observed["relative_gap"] <= thresholds.fairness_max_relative_gap,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "metric": thresholds.fairness_metric,
            "observed_relative_gap": float(observed["relative_gap"]),
            "threshold": thresholds.fairness_max_relative_gap,
            "dimension": str(observed["dimension"]),
            "best_group": str(observed["best_group"]),
            "worst_group": str(observed["worst_group"]),
        },
    )


def comparison_frame(reports: dict[str, dict]) -> pl.DataFrame:
    """One row per config: every report metric, the most-popular NDCG@10 and training cost."""
    rows = []
    for name in sorted(reports):
        report = reports[name]
        row = {"config": name, "model": report["model"], "split": report["split"]}
        row.update({m: report["metrics"][m] for m in REPORT_METRICS})
        row["most_popular ndcg@10"] = report["most_popular"]["ndcg@10"]
        row["ndcg@10 / most_popular"] = report["metrics"]["ndcg@10"] / max(report["most_popular"]["ndcg@10"], 1e-12)
        row["gate"] = "pass" if report["gate"]["passed"] else "FAIL"
        row.update(train_seconds=float(report["train_seconds"]), epochs=int(report["epochs_run"]), parameters=int(report["num_parameters"]))
        row.update({m: (float(report["metrics"][m]) if m in report["metrics"] else None) for m in EXTRA_METRICS})
        row.update({f"auc_{task}": (report.get("tasks") or {}).get(task, {}).get("auc") for task in training_lib.TASK_COLUMNS})
        efficiency = report.get("efficiency") or {}
        row["latency_p50_ms"] = efficiency.get("latency_p50_ms")
        row["latency_p95_ms"] = efficiency.get("latency_p95_ms")
        rows.append(row)
    return pl.DataFrame(rows)


@dg.asset(key="model_comparison", group_name="evaluation", kinds={"polars"}, code_version="2")
def model_comparison(context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]) -> dg.Output[pl.DataFrame]:
    """All metric reports in one table (also written to ``data_lake/reports/``)."""
    if not metric_report:
        raise dg.Failure("no metric_report partition is materialized yet: materialize some model configs first")
    frame = comparison_frame(metric_report)
    markdown = frame_markdown(frame)
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(lake.reports_dir / "model_comparison.md", (markdown + "\n").encode())
    buffer = frame.write_csv()
    atomic_write_bytes(lake.reports_dir / "model_comparison.csv", buffer.encode())
    plot = metric_bars({row["config"]: row for row in frame.iter_rows(named=True)}, "ndcg@10", "test NDCG@10 per config")
    return dg.Output(
        frame,
        metadata={"configs": frame.height, "comparison": dg.MetadataValue.md(markdown), "ndcg@10": dg.MetadataValue.md(plot)},
    )


defs = dg.Definitions(assets=[model_registry, trained_model, metric_report, model_comparison])
