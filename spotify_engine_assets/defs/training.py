"""Training and evaluation: trained models partitioned by named config, their metric reports
(gated against most-popular), and a comparison of every config."""


import dagster as dg
import polars as pl
import torch
from torch import nn
from pydantic import Field

from ..lib import metrics as metrics_lib
from ..lib import models as models_lib
from ..lib import training as training_lib
from ..lib.artifacts import atomic_write_bytes
from ..lib.configs import ConfigError, ModelConfig, default_registry, get_config, load_thresholds
from ..lib.graph import LISTENS, from_payload, message_passing_graph
from ..lib.metrics import ranking_metrics
from ..lib.models import MostPopular, parameter_count
from ..lib.plots import frame_markdown, metric_bars, training_curve
from ..lib.training import build_model, embed, fit_most_popular, num_nodes_of, train
from ..lib.paths import source_version
from .resources import DataLake, TorchRuntime

model_configs = dg.StaticPartitionsDefinition(sorted(default_registry()))
TRAINING_VERSION = source_version(models_lib, training_lib)
EVALUATION_VERSION = source_version(models_lib, metrics_lib)
REPORT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "hit_rate@10", "coverage@10")


class TrainRunConfig(dg.Config):
    max_epochs: int | None = Field(default=None, description="Cap on epochs for this run (None: the config's max_epochs).")


def _config_for(context: dg.AssetExecutionContext) -> ModelConfig:
    try:
        return get_config(context.partition_key)
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
    listening_graph: dict,
    interaction_splits: dict,
) -> dg.Output[dict]:
    """A model trained with BPR on the training interactions of its config's split, early-stopped
    on validation Recall@10 with ReduceLROnPlateau; best and final weights, config and history."""
    model_config = _config_for(context)
    if config.max_epochs is not None and config.max_epochs < 1:
        raise dg.Failure(f"max_epochs must be >= 1, got {config.max_epochs}")
    torch_runtime.apply()
    data = from_payload(listening_graph)
    split = interaction_splits[model_config.split]
    view = message_passing_graph(data, split["train"])
    pairs = _held_out(data, split)
    artifact = {"config": model_config.model_dump(), "split_settings": interaction_splits["settings"]}
    metadata: dict = {"config": dg.MetadataValue.json(model_config.model_dump()), "split": model_config.split}
    if not model_config.trainable:
        model = fit_most_popular(view)
        artifact.update(best_state={"popularity": model.popularity}, final_state={"popularity": model.popularity})
        artifact.update(history=[], best_epoch=0, epochs_run=0, train_seconds=0.0, num_parameters=0)
        metadata.update(num_parameters=0, epochs_run=0)
        return dg.Output(artifact, metadata=metadata)

    model = build_model(model_config, num_nodes_of(data))
    result = train(model, view, pairs["valid"], model_config, max_epochs=config.max_epochs, log=context.log.info)
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
        best_valid_recall_at_10=result.best_valid_recall,
        train_seconds=round(result.seconds, 2),
        torch_threads=torch.get_num_threads(),
        training_curve=dg.MetadataValue.md(training_curve(result.history, model_config.name)),
    )
    return dg.Output(artifact, metadata=metadata)


def load_trained(artifact: dict, data) -> nn.Module | MostPopular:
    """Rebuild a trained model from its artifact (the config recorded with it, best weights)."""
    model_config = ModelConfig(**artifact["config"])
    if not model_config.trainable:
        model = MostPopular(data["user"].num_nodes, data["song"].num_nodes)
        model.popularity = artifact["best_state"]["popularity"]
        return model
    model = build_model(model_config, num_nodes_of(data))
    model.load_state_dict(artifact["best_state"])
    return model


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


@dg.asset(
    key="metric_report",
    partitions_def=model_configs,
    group_name="evaluation",
    kinds={"pytorch"},
    code_version=EVALUATION_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            "ndcg_gate",
            asset="metric_report",
            blocking=True,
            description="Test NDCG@10 beats most-popular on the same split by the configured ratio "
            "(most-popular itself must beat a random ranking).",
        )
    ],
)
def metric_report(
    context: dg.AssetExecutionContext,
    torch_runtime: TorchRuntime,
    trained_model: dict,
    listening_graph: dict,
    interaction_splits: dict,
):
    """Test Recall@10/20, NDCG@10/20, Precision@10, HitRate@10 and coverage@10 of one config,
    ranking all songs with the user's training (and validation) songs masked, beside the
    most-popular figures on the same split."""
    torch_runtime.apply()
    data = from_payload(listening_graph)
    model_config = ModelConfig(**trained_model["config"])
    split = interaction_splits[model_config.split]
    metrics = evaluate_split(load_trained(trained_model, data), data, split)
    reference = evaluate_split(fit_most_popular(message_passing_graph(data, split["train"])), data, split)
    random_reference = _random_reference(data, split)
    thresholds = load_thresholds()
    if model_config.trainable:
        baseline_name, baseline, ratio = "most_popular", reference["ndcg@10"], thresholds.ndcg10_min_ratio_vs_most_popular
    else:
        baseline_name, baseline, ratio = "random", random_reference["ndcg@10"], thresholds.ndcg10_min_ratio_vs_random
    threshold = baseline * ratio
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
        "gate": {"passed": metrics["ndcg@10"] >= threshold, "threshold": threshold, "baseline": baseline_name},
    }
    table = pl.DataFrame(
        {
            "metric": list(REPORT_METRICS),
            model_config.name: [metrics[m] for m in REPORT_METRICS],
            "most_popular": [reference[m] for m in REPORT_METRICS],
        }
    )
    yield dg.Output(
        report,
        metadata={
            **{m: metrics[m] for m in REPORT_METRICS},
            "most_popular/ndcg@10": reference["ndcg@10"],
            "users_evaluated": metrics["users_evaluated"],
            "report": dg.MetadataValue.md(frame_markdown(table)),
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
        rows.append(row)
    return pl.DataFrame(rows)


@dg.asset(key="model_comparison", group_name="evaluation", kinds={"polars"}, code_version="1")
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


defs = dg.Definitions(assets=[trained_model, metric_report, model_comparison])
